"""Label Studio label-config parsing: supported controls, names, labels and the configs that are refused."""

from __future__ import annotations

import pytest

from backend.label_config import LabelConfigError, parse_label_config


def test_all_three_controls_with_any_names() -> None:
    cfg = parse_label_config("""
    <View>
      <Header value="Find things"/>
      <Image name="photo" value="$img" zoom="true"/>
      <RectangleLabels name="boxes" toName="photo"><Label value="Car"/><Label value="thing"/></RectangleLabels>
      <BrushLabels name="paint" toName="photo"><Label value="Sky"/><Label value="Road"/></BrushLabels>
      <PolygonLabels name="poly" toName="photo"><Label value="OBJECT" background="red"/></PolygonLabels>
    </View>""")
    assert [(i.name, i.data_key) for i in cfg.images] == [("photo", "img")]
    assert [(c.kind, c.from_name, c.to_name) for c in cfg.controls] == [
        ("rectanglelabels", "boxes", "photo"), ("brushlabels", "paint", "photo"), ("polygonlabels", "poly", "photo")]
    assert [c.default_label for c in cfg.controls] == ["thing", "Sky", "OBJECT"]
    assert [img.name for img, ctrls in cfg.targets()] == ["photo"]


def test_preferred_label_order_and_first_label_fallback() -> None:
    cfg = parse_label_config('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i">'
                             '<Label value="Dog"/><Label value="Thing"/><Label value="Object"/></RectangleLabels>'
                             '</View>')
    assert cfg.controls[0].default_label == "Object"
    assert cfg.controls[0].labels == ("Dog", "Thing", "Object")


def test_nested_views_two_images_and_comma_separated_toname() -> None:
    cfg = parse_label_config("""
    <View>
      <View style="display:flex"><Image name="left" value="$a"/><Image name="right" value="$b"/></View>
      <Image name="unused" value="$c"/>
      <View><RectangleLabels name="r" toName="left,right"><Label value="X"/></RectangleLabels></View>
      <Choices name="ch" toName="left"><Choice value="ok"/></Choices>
      <KeyPointLabels name="kp" toName="left"><Label value="Nose"/></KeyPointLabels>
    </View>""")
    assert [(img.name, [c.from_name for c in ctrls]) for img, ctrls in cfg.targets()] == [
        ("left", ["r"]), ("right", ["r"])]


def test_control_pointing_elsewhere_is_ignored_when_another_works() -> None:
    cfg = parse_label_config('<View><Image name="i" value="$image"/><Text name="t" value="$text"/>'
                             '<RectangleLabels name="bad" toName="t"><Label value="A"/></RectangleLabels>'
                             '<BrushLabels name="good" toName="i"><Label value="B"/></BrushLabels></View>')
    assert [c.from_name for c in cfg.controls] == ["good"]
    assert "bad" in cfg.ignored[0]


@pytest.mark.parametrize("xml, reason", [
    ("", "empty"),
    ("<View><Image name='i' value='$x'>", "not well-formed"),
    ("<View><Text name='t' value='$t'/><Labels name='l' toName='t'><Label value='A'/></Labels></View>",
     "no <Image>"),
    ("<View><Image name='i' value='$x'/><Choices name='c' toName='i'><Choice value='a'/></Choices></View>",
     "no RectangleLabels, BrushLabels or PolygonLabels"),
    ("<View><Image name='i' value='$x'/><Text name='t' value='$t'/>"
     "<RectangleLabels name='r' toName='t'><Label value='A'/></RectangleLabels></View>", "not to an <Image>"),
    ("<View><Image name='i' value='$x'/><RectangleLabels name='r' toName='i'/></View>", "has no <Label>"),
    ("<View><Image name='i' value='x'/></View>", "needs value="),
    ("<View><Image value='$x'/></View>", "no name"),
    ("<View><Image name='i' valueList='$xs'/><RectangleLabels name='r' toName='i'><Label value='A'/>"
     "</RectangleLabels></View>", "valueList"),
    ('<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaa">]><View>&a;</View>', "DOCTYPE"),
])
def test_unservable_configs_say_why(xml: str, reason: str) -> None:
    with pytest.raises(LabelConfigError, match=reason.replace("(", r"\(").replace("<", "<")):
        parse_label_config(xml)
