// edgepack browser runner: the device protocol (cold load, first inference, warm-up, timed runs, every
// validation sample's outputs) with onnxruntime-web, in the page. Shipped in each web target's folder;
// edgepack/devices/browser.py serves it to headless Chromium and reads the result the page POSTs back.

const ARRAYS = {float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array,
  int16: Int16Array, int8: Int8Array, uint8: Uint8Array, uint16: Uint16Array, bool: Uint8Array, float16: Uint16Array};

function tensors(ort, buffer, specs) {
  const feeds = {};
  for (const s of specs) {
    const Kind = ARRAYS[s.type];
    if (!Kind) throw new Error(`input ${s.name}: dtype ${s.type} is not supported by the web runner`);
    const data = new Kind(buffer.slice(s.offset, s.offset + s.bytes));
    feeds[s.name] = new ort.Tensor(s.type, data, s.dims);
  }
  return feeds;
}

function zeros(ort, inputs) {  // the demo job of a bundle: zeros of the declared shapes (dynamic dims: 1)
  const feeds = {};
  for (const i of inputs) {
    const dims = i.shape.map((d) => (typeof d === 'number' && d > 0 ? d : 1));
    const Kind = ARRAYS[i.dtype] || Float32Array;
    feeds[i.name] = new ort.Tensor(i.dtype, new Kind(dims.reduce((a, b) => a * b, 1)), dims);
  }
  return feeds;
}

export async function sessionOptions(ort, job) {
  let ep = ['wasm'];
  if (job.execution_provider === 'webgpu') {
    const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
    ep = adapter ? ['webgpu', 'wasm'] : ['wasm'];
  }
  return {executionProviders: ep, graphOptimizationLevel: 'all'};
}

async function timeRuns(session, feeds, proto) {
  const warmCount = proto.warmup_runs ?? 10, warmS = proto.warmup_seconds ?? 0.2;
  let t = performance.now(); const tEnd = t + warmS * 1000; let done = 0;
  while (done < warmCount || performance.now() < tEnd) { await session.run(feeds); done += 1; }
  const warm = {runs: done, seconds: warmS, elapsed_s: (performance.now() - t) / 1000};
  const runs = proto.runs ?? 50, minS = proto.min_seconds ?? 0.5, maxRuns = proto.max_runs ?? 100000;
  const samples = []; const tStart = performance.now();
  while ((samples.length < runs || performance.now() - tStart < minS * 1000) && samples.length < maxRuns) {
    t = performance.now(); await session.run(feeds); samples.push(performance.now() - t);
  }
  return {warm, samples, timed: {runs: samples.length, elapsed_s: (performance.now() - tStart) / 1000, hit_max_runs: samples.length >= maxRuns}};
}

// job: {model, execution_provider, threads, protocol, mode, feeds_url, first: [specs], samples: [[specs]], inputs}
export async function runJob(ort, job, post) {
  ort.env.wasm.numThreads = job.threads || 1;
  const buffer = job.feeds_url ? await (await fetch(job.feeds_url)).arrayBuffer() : null;
  const first = buffer ? tensors(ort, buffer, job.first) : zeros(ort, job.inputs);
  if (job.mode === 'memory' && post) await post('mark', '{}');  // the host takes the renderer's baseline memory
  const opts = await sessionOptions(ort, job);
  let t0 = performance.now();
  const session = await ort.InferenceSession.create(job.model, opts);
  const cold = performance.now() - t0;
  t0 = performance.now();
  await session.run(first);
  const firstMs = performance.now() - t0;
  const result = {cold_load_ms: cold, first_inference_ms: firstMs, execution_providers: opts.executionProviders,
    cross_origin_isolated: self.crossOriginIsolated, output_names: session.outputNames, user_agent: navigator.userAgent};
  if (job.mode === 'memory') {
    for (let i = 0; i < (job.memory_runs ?? 5); i++) await session.run(first);
    return result;
  }
  Object.assign(result, await timeRuns(session, first, job.protocol || {}));
  if (buffer && job.samples) {
    const chunks = []; const meta = []; let offset = 0;
    for (const specs of job.samples) {
      const outs = await session.run(tensors(ort, buffer, specs));
      meta.push(session.outputNames.map((name) => {
        const o = outs[name]; const bytes = new Uint8Array(o.data.buffer, o.data.byteOffset, o.data.byteLength).slice();
        chunks.push(bytes); const m = {name, type: o.type, dims: Array.from(o.dims), offset, bytes: bytes.byteLength};
        offset += bytes.byteLength; return m;
      }));
    }
    const blob = new Uint8Array(offset); let at = 0;
    for (const c of chunks) { blob.set(c, at); at += c.byteLength; }
    if (post) await post('outputs', blob);
    result.outputs = meta;
  }
  await session.release();
  return result;
}
