// Server-sent events read with fetch, so that the bearer token goes in a header (EventSource cannot send
// one): shared by the board's commissioning page and the gateway's store dashboard.
"use strict";

window.cuecamSSE = {
  // Read the stream at `url`, calling onOpen() once it answers 200 and onMessage(object) for every
  // data line. Resolves with the HTTP status when the stream ends (0: the network failed); rejects
  // only when `signal` aborts it.
  async read(url, headers, signal, onOpen, onMessage) {
    let r;
    try {
      r = await fetch(url, { headers, signal, cache: "no-store" });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      return 0;
    }
    if (!r.ok) return r.status;
    onOpen();
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, i);
          buf = buf.slice(i + 2);
          for (const line of event.split("\n")) {
            if (line.startsWith("data: ")) onMessage(JSON.parse(line.slice(6)));
          }
        }
      }
    } catch (e) {
      if (e.name === "AbortError") throw e;
    }
    return r.status;
  },
};
