// Audio thread: hand every captured block to the page. Messages queue while the page is busy running
// the model, so no audio is lost (a ScriptProcessorNode drops blocks when the main thread is late).
class HeronCapture extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) this.port.postMessage(channel.slice(0));
    return true;
  }
}
registerProcessor('heron-capture', HeronCapture);
