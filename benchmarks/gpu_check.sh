#!/usr/bin/env bash
# One pass of the GPU measurements on a lent GPU machine (nvidia-h200: Python 3.12 + torch cu130 at
# `python3`, no internet). Missing packages travel as wheels in .whl/ (ignored via .git/info/exclude):
# pydantic(+core, annotated-types, typing-inspection, typing-extensions), webdataset(+braceexpand),
# soundfile(+cffi, pycparser) and av (PyAV: the paha view decodes mp4 with it). Fetch them here with
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
#     webdataset==1.0.2 braceexpand==0.1.7 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 av==15.1.0
#
#   device run:  bash benchmarks/gpu_check.sh          (carry .whl; output under $OUT)
#   dry run:     GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh   (here, CPU, project venv, tiny shapes)
#
# Sections (each one guarded by `timeout`, a failure does not stop the others, and an overall
# budget GPU_CHECK_BUDGET seconds [330] skips what would not fit):
#   flame_b16     benchmarks/flame.py --batch 16: DECA encoder + FLAME layer frames/s, cpu AND cuda rows
#   facial_base   benchmarks/train_step.py facial --preset base (real batch 32 x 100 frames): steps/s, peak CUDA GiB
#   paha_256      benchmarks/train_step.py paha --preset base, no VAE/HuBERT, pixel-unshuffle 8, 256^2
#   paha_step     UniVDM step alone (one batch reused: no loader, no checkpoint) at 256^2 and 512^2
#   paha_512      as paha_256 at 512^2 (the preset's size)
#   flame_b128    benchmarks/flame.py --batch 128 (GPU throughput at a batch that fills it)
# Not measured: tests marked gpu (none exist), ASR on GPU (ctranslate2 wheels need libcublas.so.12).
set -u
cd "$(dirname "$0")/.."

DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-330}
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_log.txt
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
export TMPDIR=/tmp/gpu_check_tmp
WORK=/tmp/gpu_check_work
mkdir -p "$TMPDIR" "$WORK"
if [ "$DRY" = 1 ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
DEADLINE=$((SECONDS + BUDGET))

# tiny shapes for the dry run: same commands and flags, proves imports and argument parsing
if [ "$DRY" = 1 ]; then
  FLAME16=(--batch 2 --repeats 1); FLAME128=(--batch 2 --repeats 1)
  FACIAL=(--steps 2 --set data.batch_size=2 --set data.window_frames=24)
  PAHA_STEPS=2
  PAHA_SMALL=(--set "model.channels=[32,64,64,64]" --set model.audio_dim=32 --set model.pce_hidden=32
              --set data.window_frames=6 --set model.motion_frames=2 --set data.loader_workers=0)
  SIZES=(64 128)
else
  FLAME16=(--batch 16 --repeats 5); FLAME128=(--batch 128 --repeats 5)
  FACIAL=(--steps 30)
  PAHA_STEPS=8   # log_every = 4: steps/s over steps 5-8, inside the first 8-clip epoch (no DataLoader restart)
  PAHA_SMALL=()
  SIZES=(256 512)
fi
PAHA=(--preset base --steps "$PAHA_STEPS" --set model.vae=null --set model.audio_backbone=null --set model.latent_factor=8)

section() {  # section NAME MAX_SECONDS CMD... : runs CMD under timeout, tee'd to $OUT/NAME.txt
  local name=$1 max=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  echo
  echo "=== [$name] $(date -u +%T) limit ${max}s, ${left}s left of the ${BUDGET}s budget"
  echo "+ $*"
  if [ "$left" -lt 30 ]; then echo "SKIPPED $name: budget spent"; return; fi
  local t=$((max < left ? max : left)) t0=$SECONDS rc
  rm -rf "$TMPDIR"; mkdir -p "$TMPDIR"
  timeout -k 10 "$t" "$@" 2>&1 | tee "$OUT/$name.txt"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ]; then echo "=== [$name] ok in $((SECONDS - t0))s"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "FAILED $name: timed out after ${t}s"
  else echo "FAILED $name (rc=$rc) after $((SECONDS - t0))s"; fi
  rm -rf "$TMPDIR"
}

main() {
  echo "=== gpu_check $(date -u +%FT%TZ) dry=$DRY budget=${BUDGET}s python=$PY host=$(hostname) cores=$(nproc)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv,noheader 2>&1 \
    || echo "no nvidia-smi"
  df -h /dev/shm /tmp 2>&1 | sed 's/^/  /'

  # --- wheels -----------------------------------------------------------------------------------
  if ls .whl/*.whl >/dev/null 2>&1; then
    if [ "$DRY" = 1 ]; then  # cp312 wheels: check they install together for the device's Python, here
      rm -rf /tmp/site-dry
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-dry \
        --python-version 3.12 --implementation cp --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 .whl/*.whl \
        && echo "wheels: install for cp312 OK ($(ls /tmp/site-dry | grep -c dist-info) dists)" || echo "FAILED wheels (cp312 check)"
    else
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} && echo "wheels: installed into /tmp/site" \
        || echo "FAILED wheels install"
    fi
  else
    echo "no .whl/ here (carry it): pydantic/webdataset/soundfile/av imports may fail"
  fi
  "$PY" - <<'EOF' 2>&1 || echo "FAILED import check"
import importlib, sys
import torch
print(f"python {sys.version.split()[0]}  torch {torch.__version__}  cuda {torch.version.cuda}  "
      f"available {torch.cuda.is_available()}  {torch.cuda.get_device_name() if torch.cuda.is_available() else ''}")
for m in ("numpy", "pydantic", "pydantic_core", "webdataset", "soundfile", "av", "cv2", "yaml", "scipy", "torchvision"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {m} MISSING: {e!r}")
EOF

  # --- ffmpeg: tests/paha_data.py encodes its synthetic clips with `ffmpeg ... -c:v libx264`; the
  # device image may have no ffmpeg: then a stand-in that does the same encode through PyAV
  if [ "$DRY" = 1 ] || ! ffmpeg -hide_banner -encoders 2>/dev/null | grep -q libx264; then
    mkdir -p "$WORK/bin"
    { echo "#!$(command -v "$PY" || echo "$PWD/$PY")"; cat <<'EOF'
"""Stand-in for `ffmpeg -f rawvideo -pix_fmt rgb24 -s WxH -r FPS -i - -c:v CODEC -crf N -pix_fmt PIX -f mp4 [-movflags F] -`."""
import io, sys
import av
import numpy as np
a = sys.argv[1:]
def opt(name, default=None, last=False):
    idx = [i for i, x in enumerate(a) if x == name]
    return a[idx[-1 if last else 0] + 1] if idx else default
if opt("-i") != "-" or opt("-f") != "rawvideo" or a[-1] != "-":
    sys.exit("ffmpeg stand-in (benchmarks/gpu_check.sh): only raw rgb24 on stdin -> mp4 on stdout: " + " ".join(a))
w, h = map(int, opt("-s").split("x"))
frames = np.frombuffer(sys.stdin.buffer.read(), np.uint8).reshape(-1, h, w, 3)
buf, opts = io.BytesIO(), ({"movflags": opt("-movflags")} if opt("-movflags") else {})
with av.open(buf, "w", format="mp4", options=opts) as c:
    s = c.add_stream(opt("-c:v", "libx264"), rate=int(float(opt("-r", "25"))))
    s.width, s.height, s.pix_fmt = w, h, opt("-pix_fmt", "yuv420p", last=True)
    s.options = {"crf": opt("-crf", "18")}
    for f in frames:
        c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
    c.mux(s.encode())
sys.stdout.buffer.write(buf.getvalue())
EOF
    } > "$WORK/bin/ffmpeg"
    chmod +x "$WORK/bin/ffmpeg"
    export PATH=$WORK/bin:$PATH
    echo "ffmpeg: using the PyAV stand-in $WORK/bin/ffmpeg"
  else
    echo "ffmpeg: $(command -v ffmpeg) (has libx264)"
  fi

  # DataLoader workers pass decoded frames through /dev/shm; a small one (containers: 64 MiB) kills them
  local shm_kib paha_loader=()
  shm_kib=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')
  if [ "${shm_kib:-0}" -lt 4194304 ]; then paha_loader=(--set data.loader_workers=0)
    echo "/dev/shm free ${shm_kib:-?} KiB < 4 GiB: paha end-to-end runs with data.loader_workers=0"; fi

  # --- 1. FLAME stage: cpu and cuda rows in one command -------------------------------------------
  section flame_b16 90 "$PY" benchmarks/flame.py "${FLAME16[@]}"

  # --- 2. trainer 1 (facial), base preset at its real batch ---------------------------------------
  section facial_base 120 "$PY" benchmarks/train_step.py facial --preset base "${FACIAL[@]}"

  # --- 3. trainer 2 (PAHA), base widths, no VAE / HuBERT weights: pixel-unshuffle-8 latent ----------
  section "paha_${SIZES[0]}" 130 "$PY" benchmarks/train_step.py paha "${PAHA[@]}" --set "data.image_size=${SIZES[0]}" \
    "${PAHA_SMALL[@]}" "${paha_loader[@]}"

  # UniVDM step alone at both sizes (one batch from the loader reused: what the GPU does per step,
  # apart from decoding and the checkpoint write)
  section paha_step 100 env PAHA_SIZES="$(IFS=,; echo "${SIZES[*]}")" PAHA_STEPS="$PAHA_STEPS" \
    "$PY" - "${PAHA_SMALL[@]}" <<'EOF'
import json, os, sys, tempfile, time
from pathlib import Path
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "tests")]
import torch
from paha_data import write_paha_shards
from trainers.data import make_loader
from trainers.paha.config import load_paha_config
from trainers.paha.model import VideoModel
from trainers.paha.train import loader_config
from trainers.weights import EMA, trainable_params
extra = [v for k, v in zip(sys.argv[1::2], sys.argv[2::2]) if k == "--set"]
steps, warm = int(os.environ["PAHA_STEPS"]), 3
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
d = Path(tempfile.mkdtemp(prefix="cnas-pahastep-"))
print("| size | batch x frames | latent | trainable M | s/step | steps/s | peak CUDA GiB |")
print("|---|---|---|---|---|---|---|")
for size in map(int, os.environ["PAHA_SIZES"].split(",")):
    sets = ["model.vae=null", "model.audio_backbone=null", "model.latent_factor=8", f"data.image_size={size}",
            "data.loader_workers=0"] + extra
    cfg = load_paha_config("base", sets)
    urls = write_paha_shards(d / str(size), clips=2, frames=max(cfg.data.window_frames, 24), size=size, per_shard=2)
    cfg = load_paha_config("base", sets + [f"data.urls={json.dumps(urls)}"])
    batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in next(iter(make_loader(loader_config(cfg)))).items()}
    model = opt = ema = None
    try:
        if dev.type == "cuda":
            torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        with dev:
            model = VideoModel(cfg.model).to(dev)
        params = trainable_params(model)
        opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        ema = EMA(model, cfg.train.ema_decay, skip_prefixes=("frontend.model.", "latent.vae."))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.train.amp and dev.type == "cuda")
        model.train()
        for step in range(warm + steps):
            if step == warm:
                sync(); t0 = time.perf_counter()
            use_motion = bool(torch.rand((), generator=torch.Generator().manual_seed(step)) < cfg.model.p_motion)
            with autocast:
                loss, _ = model.loss(batch, use_motion and cfg.model.motion_frames > 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            opt.step()
            ema.update(model)
        sync()
        dt = (time.perf_counter() - t0) / steps
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if dev.type == "cuda" else "-"
        lat = size // cfg.model.latent_factor
        print(f"| {size} | {cfg.data.batch_size} x {cfg.data.window_frames} | {lat}x{lat} | {sum(p.numel() for p in params) / 1e6:.0f} "
              f"| {dt:.3f} | {1 / dt:.2f} | {peak} |  loss {loss.item():.4f}")
    except torch.cuda.OutOfMemoryError as e:
        print(f"| {size} | OOM: {str(e).splitlines()[0]} |")
    del model, opt, ema
EOF

  section "paha_${SIZES[1]}" 130 "$PY" benchmarks/train_step.py paha "${PAHA[@]}" --set "data.image_size=${SIZES[1]}" \
    "${PAHA_SMALL[@]}" "${paha_loader[@]}"

  # --- 4. GPU-marked tests: pyproject declares the marker, no test uses it --------------------------
  echo
  echo "=== [tests] tests marked gpu / cuda skips:"
  grep -rnE "mark\.gpu|skipif\(.*cuda" tests/ --include='*.py' || echo "  none marked gpu"

  # --- extra: FLAME encoder at a batch that fills the GPU (its cpu row is repeated too) -------------
  section flame_b128 90 "$PY" benchmarks/flame.py "${FLAME128[@]}"

  echo
  echo "=== 5. ASR not measured: ctranslate2 4.8.5 (faster-whisper) dlopens libcublas.so.12; the image has CUDA 13 (libcublas.so.13)"
  "$PY" -c "import ctypes; ctypes.CDLL('libcublas.so.12'); print('  but libcublas.so.12 loads here')" 2>/dev/null \
    || echo "  (checked: libcublas.so.12 does not load here)"
  timeout 15 find / -xdev -name 'libcublas.so.1[0-9]*' 2>/dev/null | head -5 | sed 's/^/  found /'
  nvidia-smi --query-gpu=memory.used,temperature.gpu --format=csv,noheader 2>/dev/null
  echo "=== gpu_check done in ${SECONDS}s $(date -u +%T)"
  rm -rf "$WORK" "$TMPDIR"
}

main 2>&1 | tee "$LOG"
