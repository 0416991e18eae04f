"""Parse a Label Studio labeling config (XML) into what the backend can fill: Image objects and their
RectangleLabels / BrushLabels / PolygonLabels controls, with the label each control's regions get.

Any tag names and any combination are accepted as long as every usable control points (``toName``) to an
``<Image>``; a config the backend cannot serve raises :class:`LabelConfigError` with the reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

#: Lower-case tag → Label Studio result type for the controls the backend fills.
SUPPORTED_CONTROLS = {"rectanglelabels": "rectanglelabels", "brushlabels": "brushlabels",
                      "polygonlabels": "polygonlabels"}
#: Label names preferred for class-agnostic objects (compared case-insensitively), in this order.
PREFERRED_LABELS = ("object", "objects", "thing", "things", "foreground", "item")
MAX_CONFIG_CHARS = 1_000_000


class LabelConfigError(ValueError):
    """The label config cannot be served; the message says why."""


@dataclass(frozen=True)
class ImageObject:
    """An ``<Image name=... value="$key">`` tag; ``data_key`` is the task data field holding the image URL."""

    name: str
    data_key: str


@dataclass(frozen=True)
class Control:
    """A supported control: its result ``kind``, ``from_name``, the Image it labels and its labels."""

    kind: str
    from_name: str
    to_name: str
    labels: tuple[str, ...]

    @property
    def default_label(self) -> str:
        """A label named like Object/Thing if the control has one, else its first label."""
        lowered = {lab.lower(): lab for lab in reversed(self.labels)}
        for name in PREFERRED_LABELS:
            if name in lowered:
                return lowered[name]
        return self.labels[0]


@dataclass(frozen=True)
class LabelConfig:
    """The servable part of a label config."""

    images: tuple[ImageObject, ...]
    controls: tuple[Control, ...]
    ignored: tuple[str, ...] = field(default=())  # human-readable notes on controls left out

    def controls_for(self, image_name: str) -> list[Control]:
        return [c for c in self.controls if c.to_name == image_name]

    def targets(self) -> list[tuple[ImageObject, list[Control]]]:
        """Each Image that has at least one control, with its controls (config order)."""
        return [(img, self.controls_for(img.name)) for img in self.images if self.controls_for(img.name)]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].lower()


def parse_label_config(xml: str) -> LabelConfig:
    """Parse ``xml``; raise :class:`LabelConfigError` if it is malformed or has nothing the backend can fill."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"label config is too long ({len(xml)} characters)")
    if "<!DOCTYPE" in xml.upper() or "<!ENTITY" in xml.upper():
        raise LabelConfigError("label config must not contain DOCTYPE or ENTITY declarations")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label config is not well-formed XML ({exc})") from None

    images: list[ImageObject] = []
    for el in root.iter():
        if _local(el.tag) != "image":
            continue
        name, value = el.get("name"), el.get("value") or el.get("valueList")
        if not name:
            raise LabelConfigError("an <Image> tag has no name attribute")
        if not value or not value.startswith("$") or len(value) < 2:
            raise LabelConfigError(f"<Image name={name!r}> needs value=\"$<data field>\", got {value!r}")
        if el.get("valueList"):
            raise LabelConfigError(f"<Image name={name!r}> uses valueList (multi-image), which is not supported")
        images.append(ImageObject(name=name, data_key=value[1:]))
    if not images:
        raise LabelConfigError("label config has no <Image> object")
    image_names = {img.name for img in images}

    controls: list[Control] = []
    ignored: list[str] = []
    seen_kinds: list[str] = []
    for el in root.iter():
        kind = SUPPORTED_CONTROLS.get(_local(el.tag))
        if kind is None:
            continue
        seen_kinds.append(kind)
        name = el.get("name")
        if not name:
            raise LabelConfigError(f"a <{el.tag}> control has no name attribute")
        targets = [t.strip() for t in (el.get("toName") or "").split(",") if t.strip()]
        labels = tuple(lab.get("value") or lab.get("alias") for lab in el.iter()
                       if _local(lab.tag) == "label" and (lab.get("value") or lab.get("alias")))
        image_targets = [t for t in targets if t in image_names]
        if not image_targets:
            ignored.append(f"<{el.tag} name={name!r}> points to {targets or 'nothing'}, not to an <Image>")
            continue
        if not labels:
            ignored.append(f"<{el.tag} name={name!r}> has no <Label> to predict")
            continue
        for target in image_targets:
            controls.append(Control(kind=kind, from_name=name, to_name=target, labels=labels))
    if not controls:
        if ignored:
            raise LabelConfigError("no usable control: " + "; ".join(ignored))
        raise LabelConfigError("label config has no RectangleLabels, BrushLabels or PolygonLabels control")
    return LabelConfig(images=tuple(images), controls=tuple(controls), ignored=tuple(ignored))
