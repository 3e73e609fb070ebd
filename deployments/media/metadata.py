"""The provenance record (deployments/workflows/provenance.py) inside an image file, and read back from
one: PNG, an iTXt chunk `provenance`; JPEG and WebP, an XMP packet whose `qec:provenance` property
holds the JSON (the `xmp` entry of Pillow's `Image.info`)."""

import io
import json
import xml.etree.ElementTree as ElementTree
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image, PngImagePlugin

from deployments.errors import InvalidInputError

KEY = "provenance"
NAMESPACE = "https://github.com/qwen-edit-cluster/xmp/1.0/"
XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    f'<rdf:Description rdf:about="" xmlns:qec="{NAMESPACE}"><qec:provenance>{{}}</qec:provenance></rdf:Description>'
    '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def as_text(provenance: dict[str, Any]) -> str:
    """The record as it is written: JSON with sorted keys (the same record, the same bytes)."""
    return json.dumps(provenance, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def save_options(provenance: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Pillow `save` options that write the record into an image of `fmt`."""
    text = as_text(provenance)
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt(KEY, text)
        return {"pnginfo": info}
    return {"xmp": XMP.format(escape(text)).encode("utf-8")}


def read(data: bytes) -> dict[str, Any]:
    """The record an edited image carries; InvalidInputError (param `image`) if it has none."""
    image = Image.open(io.BytesIO(data))
    if image.format == "PNG":
        text = image.text.get(KEY)
    else:
        text = _from_xmp(image.info.get("xmp"))
    if text is None:
        raise InvalidInputError("image", f"carries no provenance record (a {image.format} file not made by this project)")
    return json.loads(text)


def _from_xmp(xmp: bytes | None) -> str | None:
    if not xmp:
        return None
    found = ElementTree.fromstring(xmp.decode("utf-8").split("?>", 1)[1].rsplit("<?xpacket", 1)[0]).find(f".//{{{NAMESPACE}}}{KEY}")
    return None if found is None else found.text
