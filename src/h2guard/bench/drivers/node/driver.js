'use strict';
// h2guard bench's Node.js driver: the http2 module, used as a service typically does.
//
// ONE ClientHttp2Session from http2.connect(url, {ca}) is shared by every request; once it
// emits 'goaway', 'close' or 'error' (or is closed or destroyed) the next request opens a new
// session. Nothing is retried: a request that fails is reported with the error Node gave it,
// `${err.code}: ${err.message}`, which is what a service would log. The whole-request timeout
// is an AbortSignal.timeout on session.request (http2 has no timeout of its own but an idle
// one). Node 20, no npm packages.

const fs = require('fs');
const http2 = require('http2');

function badSpec(message) {
  process.stderr.write(`bad spec: ${message}\n`);
  process.exit(2);
}

function loadSpec(path) {
  let text;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    badSpec(`cannot read ${path}: ${err.message}`);
  }
  let spec;
  try {
    spec = JSON.parse(text);
  } catch (err) {
    badSpec(`${path} is not JSON: ${err.message}`);
  }
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) {
    badSpec('the spec must be a JSON object');
  }
  const { url, ca_file: caFile, concurrency, timeout_s: timeoutS, gap_s: gapS, waves } = spec;
  if (typeof url !== 'string' || !url.startsWith('https://') || url.endsWith('/')) {
    badSpec(`url must be an https:// origin without a trailing slash, got ${JSON.stringify(url)}`);
  }
  if (typeof caFile !== 'string' || caFile === '') badSpec('ca_file must be a path');
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    badSpec('concurrency must be an integer of at least 1');
  }
  if (typeof timeoutS !== 'number' || !(timeoutS > 0)) badSpec('timeout_s must be above 0');
  if (typeof gapS !== 'number' || !(gapS >= 0)) badSpec('gap_s must be at least 0');
  if (!Array.isArray(waves)) badSpec('waves must be a list of lists of requests');
  waves.forEach((wave, w) => {
    if (!Array.isArray(wave)) badSpec(`waves[${w}] must be a list of requests`);
    wave.forEach((r, i) => {
      const where = `waves[${w}][${i}]`;
      if (r === null || typeof r !== 'object' || Array.isArray(r)) {
        badSpec(`${where} must be an object`);
      }
      if (typeof r.id !== 'string' || r.id === '') badSpec(`${where}: id must be a string`);
      if (typeof r.method !== 'string' || r.method === '') {
        badSpec(`${where}: method must be a string`);
      }
      if (typeof r.path !== 'string' || !r.path.startsWith('/')) {
        badSpec(`${where}: path must start with /`);
      }
      if (!Number.isInteger(r.body_size) || r.body_size < 0) {
        badSpec(`${where}: body_size must be an integer of at least 0`);
      }
    });
  });
  let ca;
  try {
    ca = fs.readFileSync(caFile);
  } catch (err) {
    badSpec(`cannot read ca_file: ${err.message}`);
  }
  return { url, ca, concurrency, timeoutMs: Math.max(1, Math.round(timeoutS * 1000)),
           gapMs: Math.round(gapS * 1000), waves };
}

function now() {
  return (performance.timeOrigin + performance.now()) / 1000;
}

function emit(obj) {
  // stdout is a pipe: writes are synchronous on Linux, so each line is out when this returns
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function describe(err) {
  return `${err.code ?? err.name}: ${err.message}`; // what a service logs
}

class Sessions {
  constructor(url, ca) {
    this.url = url;
    this.ca = ca;
    this.current = null;
  }

  get() {
    const s = this.current;
    if (s !== null && !s.closed && !s.destroyed && !s.benchRetired) return s;
    const session = http2.connect(this.url, { ca: this.ca });
    session.benchRetired = false;
    const retire = () => {
      session.benchRetired = true;
      if (this.current === session) this.current = null;
    };
    session.on('goaway', retire);
    session.on('close', retire);
    session.on('error', retire); // the streams on it get their own errors
    this.current = session;
    return session;
  }

  close() {
    if (this.current !== null) this.current.close();
    this.current = null;
  }
}

const bodies = new Map();
function bodyOf(size) {
  let b = bodies.get(size);
  if (b === undefined) {
    b = Buffer.alloc(size, 'x');
    bodies.set(size, b);
  }
  return b;
}

function one(sessions, spec, r) {
  return new Promise((resolve) => {
    const start = now();
    const rec = { id: r.id, status: null, error: null, start, end: start, bytes: 0,
                  protocol: null };
    let settled = false;
    let firstError = null;
    let ended = false;
    const finish = () => {
      if (settled) return;
      settled = true;
      rec.end = now();
      if (firstError !== null) {
        rec.error = describe(firstError);
      } else if (!ended || rec.status === null) {
        // a session that closes under a stream ends it quietly, with no response at all
        rec.error = `ERR_HTTP2_STREAM_CLOSED: the stream closed before the response ` +
                    `${rec.status === null ? 'arrived' : 'ended'} ` +
                    `(rstCode ${stream === null ? 'n/a' : stream.rstCode})`;
      }
      emit(rec);
      resolve();
    };
    let stream = null;
    try {
      const session = sessions.get();
      const headers = { ':method': r.method, ':path': r.path, 'x-request-id': r.id };
      if (r.body_size > 0) headers['content-type'] = 'application/octet-stream';
      stream = session.request(headers, { signal: AbortSignal.timeout(spec.timeoutMs) });
    } catch (err) {
      firstError = err;
      finish();
      return;
    }
    stream.on('response', (h) => {
      rec.status = Number(h[':status']);
      rec.protocol = 'h2';
    });
    stream.on('data', (chunk) => { rec.bytes += chunk.length; });
    stream.on('end', () => { ended = true; });
    stream.on('error', (err) => { if (firstError === null) firstError = err; });
    stream.on('close', finish);
    if (r.body_size > 0) stream.end(bodyOf(r.body_size));
    else stream.end();
  });
}

async function runWave(sessions, spec, wave) {
  let next = 0;
  const worker = async () => {
    while (next < wave.length) {
      const r = wave[next++];
      await one(sessions, spec, r);
    }
  };
  const n = Math.min(spec.concurrency, wave.length);
  await Promise.all(Array.from({ length: n }, worker));
}

async function main() {
  if (process.argv.length !== 3) {
    process.stderr.write('usage: node driver.js SPEC.json\n');
    process.exit(2);
  }
  const spec = loadSpec(process.argv[2]);
  const sessions = new Sessions(spec.url, spec.ca);
  for (let w = 0; w < spec.waves.length; w++) {
    await runWave(sessions, spec, spec.waves[w]);
    if (w < spec.waves.length - 1 && spec.gapMs > 0) {
      await new Promise((r) => setTimeout(r, spec.gapMs));
    }
  }
  sessions.close();
  process.stdout.write(JSON.stringify({ done: true, client: 'node', version: process.version }) +
                       '\n', () => process.exit(0));
}

main().catch((err) => {
  process.stderr.write(`driver: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
