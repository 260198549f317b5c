"""Scene files are strict like board configs: every problem names file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware.camera.scene import SCENES_DIR, load_scene
from firmware.errors import ConfigError

GOOD = """\
background: median:{media}/vtest.avi
duration: 5
actors:
  - sprite: {{image: {media}/test_couple.jpg, person: 0}}
    height: 120
    waypoints:
      - [0, 0.1, 0.5]
      - [4, 0.9, 0.5]
"""


def _write(tmp_path: Path, text: str, shared_media: Path) -> Path:
    p = tmp_path / "scene.yaml"
    p.write_text(text.format(media=shared_media.resolve()) if "{media}" in text else text)
    return p


@pytest.mark.parametrize("name", sorted(p.stem for p in SCENES_DIR.glob("*.yaml")))
def test_every_shipped_scene_loads(name, shared_media):
    scene = load_scene(SCENES_DIR / f"{name}.yaml")
    assert scene.frames >= 50 and scene.spec.actors and scene.spec.description


def test_a_good_scene_loads(tmp_path, shared_media):
    scene = load_scene(_write(tmp_path, GOOD, shared_media))
    assert scene.size == (768, 576) and scene.frames == 50


@pytest.mark.parametrize(
    ("edit", "line", "fragment"),
    [
        (lambda t: t.replace("duration: 5", "duraton: 5"), 2, "duraton: unknown key"),
        (lambda t: t.replace("[4, 0.9, 0.5]", "[0, 0.9, 0.5]"), 6, "actors.0.waypoints: Value"),
        (lambda t: t.replace("height: 120", "height: -3"), 5, "actors.0.height"),
        (lambda t: t.replace("person: 0}", "person: 0, box: [0, 0, 10, 10]}"), 4, "actors.0.sprite"),
        (lambda t: t.replace("duration: 5", "duration: 5\nduration: 6"), 3, "duplicate key"),
        (lambda t: t.replace("test_couple.jpg", "nobody.jpg"), 4, "no such sprite image"),
        (lambda t: t.replace("vtest.avi", "missing.avi"), 1, "no such video"),
        (lambda t: t.replace("actors:", "actors: ["), 4, "not valid YAML"),
    ],
    ids=["unknown-key", "time-not-increasing", "negative-height", "person-and-box", "duplicate", "no-sprite",
         "no-background", "bad-yaml"],
)
def test_broken_scenes_name_file_line_and_key(tmp_path, shared_media, edit, line, fragment):
    p = _write(tmp_path, edit(GOOD.format(media=shared_media.resolve())), shared_media)
    with pytest.raises(ConfigError) as e:
        load_scene(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}") or f"{p}:{line}:" in msg, msg
    if fragment != "actors.0.waypoints: Value":
        assert fragment in msg, msg
    else:
        assert "actors.0.waypoints" in msg and "times must increase" in msg, msg


def test_empty_and_missing_scene_files(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    with pytest.raises(ConfigError, match=r"empty.yaml:1: scene file is empty"):
        load_scene(p)
    with pytest.raises(ConfigError, match="no such scene file"):
        load_scene(tmp_path / "nope.yaml")
    p.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_scene(p)


def test_a_sprite_from_a_video_frame_past_its_end_is_named(tmp_path, shared_media):
    """``sprite: {image: VIDEO, frame: N}``: a frame the video does not have is a clear error (the
    shipped weak_stop scene takes its shopper from vtest.avi's frame 180; the video has 795)."""
    from firmware.camera.scene import SceneRenderer
    from firmware.errors import CameraError

    text = GOOD.replace("{{image: {media}/test_couple.jpg, person: 0}}",
                        "{{image: {media}/vtest.avi, frame: 5000, box: [586, 127, 612, 202]}}")
    with pytest.raises(CameraError, match=r"vtest.avi: the video has only 795 frames, so there is no frame 5000"):
        SceneRenderer(load_scene(_write(tmp_path, text, shared_media)))
