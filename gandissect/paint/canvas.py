"""The paint canvas of the GANPaint app: the current image with a transparent layer the user
paints on, as the template, style and script of one ``gr.HTML`` block (no Gradio import here),
plus the conversions between images, masks and the PNG data URLs they travel as.

Why not ``gr.ImageEditor``: an editor that is written by the event that reads it stalled
Gradio 6.31's client (blank editor behind "queue: 1/1", strokes lost, the canvas shifted), and
every edit uploaded files. Here the browser keeps the painted mask in an off-screen canvas of
:data:`MASK_SIDE` pixels that no server update touches. *Apply* takes a copy of it
(:data:`TAKE_MASK_JS` runs before the Python callback and puts the mask into a hidden text
box); the server answers with the new image and ``clear="taken"``, and only the pixels that
were taken are erased, so paint added while the server worked stays. The image is shown as a
64 px data URL scaled by CSS (``image-rendering: pixelated``): nothing is written to disk.

>>> import numpy as np
>>> m = np.zeros((5, 7), bool); m[1:3, 2:6] = True
>>> bool((decode_mask(mask_data_url(m)) == m).all())
True
>>> decode_mask("")
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

#: Side of the mask the browser paints (independent of the size the canvas is shown at).
MASK_SIDE = 256
#: Largest data URL accepted for a mask (characters); a 256 px mask PNG is a few KB.
MAX_MASK_CHARS = 8_000_000
#: Largest decoded mask (pixels): anything bigger is refused before it is decoded.
MAX_MASK_PIXELS = 4096 * 4096
_PREFIX = "data:image/png;base64,"

HTML = f"""
<div class="gp-stage">
  <img class="gp-image" alt="the image to paint on" draggable="false"
       src="${{value && value.src ? value.src : ''}}">
  <canvas class="gp-view" width="{MASK_SIDE}" height="{MASK_SIDE}"
          aria-label="paint here"></canvas>
</div>
<div class="gp-bar">
  <label>brush <input class="gp-size" type="range" min="4" max="64" value="24"></label>
  <button class="gp-clear" type="button">Clear paint</button>
  <span class="gp-note"></span>
</div>
"""

CSS = """
.gp-stage { position: relative; width: 100%; max-width: 512px; aspect-ratio: 1 / 1;
            margin: 0 auto; background: #888; user-select: none; }
.gp-image { position: absolute; inset: 0; width: 100%; height: 100%;
            image-rendering: pixelated; }
.gp-view { position: absolute; inset: 0; width: 100%; height: 100%; opacity: 0.55;
           cursor: crosshair; touch-action: none; }
.gp-bar { display: flex; flex-wrap: wrap; gap: 8px; align-items: center;
          max-width: 512px; margin: 6px auto 0; font-size: 0.9em; }
.gp-bar input { vertical-align: middle; max-width: 140px; }
.gp-bar button { padding: 2px 10px; border: 1px solid #999; border-radius: 4px; }
"""

JS = f"""
const S = {{ mask: document.createElement('canvas'), size: 24, drawing: false, last: null,
            painted: false, taken: null, seq: -1 }};
S.mask.width = S.mask.height = {MASK_SIDE};
const view = () => element.querySelector('canvas.gp-view');
function redraw() {{
  const v = view(); if (!v) return;
  const g = v.getContext('2d');
  g.clearRect(0, 0, v.width, v.height); g.drawImage(S.mask, 0, 0);
  const size = element.querySelector('.gp-size'); if (size) size.value = S.size;
}}
function pos(e) {{
  const v = view(), r = v.getBoundingClientRect();
  return [(e.clientX - r.left) * v.width / r.width, (e.clientY - r.top) * v.height / r.height];
}}
function line(a, b) {{
  const g = S.mask.getContext('2d');
  g.globalCompositeOperation = 'source-over';
  g.strokeStyle = '#ff00ff'; g.lineWidth = S.size; g.lineCap = 'round'; g.lineJoin = 'round';
  g.beginPath(); g.moveTo(a[0], a[1]); g.lineTo(b[0] + 0.01, b[1]); g.stroke();
  S.painted = true; redraw();
}}
function clearAll() {{
  S.mask.getContext('2d').clearRect(0, 0, S.mask.width, S.mask.height);
  S.painted = false; S.taken = null; redraw();
}}
element.addEventListener('pointerdown', (e) => {{
  if (!e.target.classList || !e.target.classList.contains('gp-view')) return;
  e.preventDefault();
  try {{ e.target.setPointerCapture(e.pointerId); }} catch (err) {{}}
  S.drawing = true; S.last = pos(e); line(S.last, S.last);
}});
element.addEventListener('pointermove', (e) => {{
  if (!S.drawing) return;
  const p = pos(e); line(S.last, p); S.last = p;
}});
for (const name of ['pointerup', 'pointercancel', 'pointerleave']) {{
  element.addEventListener(name, () => {{ S.drawing = false; }});
}}
element.addEventListener('click', (e) => {{
  if (e.target.closest && e.target.closest('.gp-clear')) clearAll();
}});
element.addEventListener('input', (e) => {{
  if (e.target.classList && e.target.classList.contains('gp-size')) S.size = +e.target.value;
}});
// Apply: hand over a copy of the mask ('' when nothing is painted); see TAKE_MASK_JS
window.__ganpaint = {{
  take() {{
    if (!S.painted) return '';
    // the copy is opaque wherever any paint is, so erasing it leaves no faint edges
    const copy = document.createElement('canvas');
    copy.width = copy.height = {MASK_SIDE};
    const g = copy.getContext('2d');
    const data = S.mask.getContext('2d').getImageData(0, 0, {MASK_SIDE}, {MASK_SIDE});
    for (let i = 3; i < data.data.length; i += 4) data.data[i] = data.data[i] > 0 ? 255 : 0;
    g.putImageData(data, 0, 0);
    S.taken = copy;
    return S.mask.toDataURL('image/png');
  }},
  painted() {{ return S.painted; }},
}};
function update() {{
  const v = props.value || {{}};
  if (v.seq !== undefined && v.seq === S.seq) {{ redraw(); return; }}
  S.seq = v.seq;
  if (v.clear === 'all') clearAll();
  else if (v.clear === 'taken' && S.taken) {{
    const g = S.mask.getContext('2d');
    g.globalCompositeOperation = 'destination-out'; g.drawImage(S.taken, 0, 0);
    g.globalCompositeOperation = 'source-over';
    S.taken = null;
    const px = g.getImageData(0, 0, S.mask.width, S.mask.height).data;
    S.painted = false;
    for (let i = 3; i < px.length; i += 4) {{ if (px[i] > 0) {{ S.painted = true; break; }} }}
  }}
  const note = element.querySelector('.gp-note'); if (note) note.textContent = v.note || '';
  redraw();
}}
watch('value', update);
update();
"""

#: The ``js`` of the Apply event: its first input (a hidden text box) becomes the mask.
TAKE_MASK_JS = ("(...args) => { const p = window.__ganpaint; "
                "args[0] = p ? p.take() : ''; return args; }")


def image_data_url(image: np.ndarray) -> str:
    """A uint8 ``[H, W, 3]`` image as a PNG data URL."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return _PREFIX + base64.b64encode(buf.getvalue()).decode("ascii")


def canvas_value(image: np.ndarray, clear: str, seq: int, note: str = "") -> dict[str, Any]:
    """The canvas block's value: the image, which paint to erase (``all``: a new image;
    ``taken``: what the last Apply took; ``none``), a sequence number (every update differs)
    and a note shown under the canvas."""
    if clear not in ("all", "taken", "none"):
        raise ValueError(f"clear must be all, taken or none, got {clear!r}")
    return {"src": image_data_url(image), "clear": clear, "seq": int(seq), "note": note}


def mask_data_url(mask: np.ndarray) -> str:
    """A bool ``[H, W]`` mask as the RGBA PNG data URL the canvas sends (painted: alpha 255)."""
    m = np.asarray(mask, bool)
    rgba = np.zeros((*m.shape, 4), np.uint8)
    rgba[m] = (255, 0, 255, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return _PREFIX + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_mask(data: str | None) -> np.ndarray | None:
    """The painted mask (bool ``[H, W]``: alpha > 0, or any channel > 0 without alpha) of a PNG
    (or other image) data URL; ``None`` when empty. ValueError saying what is wrong otherwise."""
    if data is None or not str(data).strip():
        return None
    text = str(data).strip()
    if len(text) > MAX_MASK_CHARS:
        raise ValueError(f"the painted mask is too large ({len(text):,} characters)")
    if not text.startswith("data:image/") or ";base64," not in text:
        raise ValueError("the painted mask must be an image data URL (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(text.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > MAX_MASK_PIXELS:
                raise ValueError(f"the painted mask is too large ({img.width}x{img.height})")
            arr = np.asarray(img.convert("RGBA"))
    except (binascii.Error, UnidentifiedImageError, OSError) as e:
        raise ValueError(f"could not read the painted mask ({type(e).__name__})") from e
    alpha = arr[..., 3]
    return alpha > 0 if (alpha < 255).any() else arr[..., :3].max(axis=2) > 0
