// A Pico W in a box: the companion's real code (the .mpy files mpy-cross made, or the sources)
// under real MicroPython (the WebAssembly port, 1.27) with fake pins and radio (fakes.py), driven
// by the test over stdin/stdout, one JSON object a line. Every HTTP request the companion makes
// is handed here and sent to the real board process on loopback with node's http module.
//
//   node harness.mjs --lib DIR --config companion.json --flash DIR [--join-ms N]
//
// DIR (--lib) holds cuecam_companion/ (.mpy or .py); --flash is the Pico's flash on the host: its
// files are copied in at start and copied out before every request leaves the "Pico" and after
// every command, so what the companion wrote before it spoke survives a kill (a reset).
// Commands: {"id": N, "cmd": "press"|"down"|"up"|"wifi_drop"|"wifi_restore"|"state"|"exit", ...}.
// Output: {"id": N, "ok": true, "result": ...} for commands, {"ev": ...} events (led, confirm,
// request, log).
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
for (const need of ["lib", "config", "flash"]) {
  if (!args[need]) {
    process.stderr.write(`harness: --${need} is required\n`);
    process.exit(2);
  }
}

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const started = performance.now();
const mp = await loadMicroPython({
  heapsize: 2 * 1024 * 1024,
  stdout: (line) => out({ ev: "log", msg: line }),
  stderr: (line) => out({ ev: "log", msg: line, stderr: true }),
});

// the Pico's file system: /lib/cuecam_companion, /companion.json, /flash (counter)
function copyIn(src, dst) {
  mp.FS.mkdirTree(dst);
  for (const name of fs.readdirSync(src)) {
    const s = path.join(src, name);
    if (fs.statSync(s).isDirectory()) copyIn(s, `${dst}/${name}`);
    else mp.FS.writeFile(`${dst}/${name}`, fs.readFileSync(s));
  }
}
copyIn(args.lib, "/lib");
mp.FS.writeFile("/companion.json", fs.readFileSync(args.config));
fs.mkdirSync(args.flash, { recursive: true });
copyIn(args.flash, "/flash");

function syncFlash() {
  for (const name of mp.FS.readdir("/flash")) {
    if (name === "." || name === "..") continue;
    const data = mp.FS.readFile(`/flash/${name}`);
    const dst = path.join(args.flash, name);
    const tmp = dst + ".harness-tmp";
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, dst);
  }
  for (const name of fs.readdirSync(args.flash)) {
    if (!mp.FS.analyzePath(`/flash/${name}`).exists) fs.rmSync(path.join(args.flash, name));
  }
}

// one request from the companion's transport, sent to the board for real
function request(spec) {
  const req = JSON.parse(spec);
  syncFlash(); // whatever the companion wrote before speaking is on "flash"
  return new Promise((resolve) => {
    const body = Buffer.from(req.body, "hex");
    const url = new URL(req.path, req.url);
    const headers = { ...req.headers, "Content-Length": String(body.length), Connection: "close" };
    const t0 = performance.now();
    const done = (result) => {
      if (req.method === "POST") {
        out({ ev: "request", url: url.href, method: req.method, headers: req.headers, body: req.body,
              status: result.status ?? null, error: result.error ?? null, ms: performance.now() - t0 });
      }
      resolve(JSON.stringify(result));
    };
    const r = http.request(url, { method: req.method, headers, timeout: req.timeout_ms, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const h = {};
        for (const [k, v] of Object.entries(res.headers)) h[k.toLowerCase()] = Array.isArray(v) ? v.join(", ") : v;
        done({ status: res.statusCode, headers: h, body: Buffer.concat(chunks).toString("hex") });
      });
      res.on("error", (e) => done({ error: `${e.code || e.name}: ${e.message}` }));
    });
    r.on("timeout", () => r.destroy(new Error(`timed out after ${req.timeout_ms} ms`)));
    r.on("error", (e) => done({ error: `${e.code || e.name}: ${e.message}` }));
    r.end(body);
  });
}

mp.registerJsModule("harness", {
  request,
  emit: (line) => process.stdout.write(line + "\n"),
  now: () => performance.now(),
});

await mp.runPythonAsync(`
import sys
sys.path.insert(0, "/lib")
`);
mp.FS.writeFile("/lib/rig.py", fs.readFileSync(path.join(here, "rig.py")));
await mp.runPythonAsync(`
import rig
rig.start("/companion.json", "/flash", ${Number(args["join-ms"] || 200)})
`);
out({ ev: "ready", load_ms: performance.now() - started });

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    out({ ev: "error", msg: `not JSON: ${line.slice(0, 200)}` });
    continue;
  }
  if (cmd.cmd === "exit") {
    syncFlash();
    out({ id: cmd.id, ok: true, result: null });
    process.exit(0);
  }
  if (cmd.cmd === "kill") process.exit(0); // a reset: nothing more reaches flash
  // the command runs on MicroPython's asyncio (the JS event loop); the companion's tasks go on meanwhile
  mp.globals.set("_cmd_line", line);
  try {
    await mp.runPythonAsync("await rig.command(_cmd_line)");
  } catch (e) {
    out({ id: cmd.id, ok: false, error: String(e).slice(0, 2000) });
  }
  syncFlash();
}
syncFlash();
process.exit(0);
