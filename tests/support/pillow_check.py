"""A script that thumbnails every accepted image type with whatever Pillow it finds, and reports.

Run with the `sam build` Pillow layer (test_sam_build.py) and inside the image (test_container.py):
both prune Pillow the same way (``PRUNED`` in infra/sam_build.py).
"""

PILLOW_CHECK = """
import io, json
from PIL import Image, ImageOps, features
from shared.tasks.files import THUMBNAIL_TYPES, sniff
sizes = {}
for fmt in ("PNG", "JPEG", "GIF", "WEBP"):
    source = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 40, 40)).save(source, fmt)
    content_type = sniff(source.getvalue())
    assert content_type in THUMBNAIL_TYPES, (fmt, content_type)
    source.seek(0)
    with Image.open(source) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image.thumbnail((128, 128))
    out = io.BytesIO()
    image.save(out, "WEBP", quality=80)
    sizes[fmt] = Image.open(io.BytesIO(out.getvalue())).size
print(json.dumps({"sizes": sizes, "avif": features.check("avif"), "freetype2": features.check("freetype2")}))
"""
