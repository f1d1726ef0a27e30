"""TensorBoard event files of a run (tensorboardX), read back record by record."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from compose_support import tiny_cache_dir
from tensorboardX.proto.event_pb2 import Event

from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.tensorboard import TENSORBOARD_DIR
from conceptlib.trainer.train import TrainingInterrupted, train


def read_events(folder: Path) -> list[Event]:
    """Every event of every file in ``folder``, in file order (TFRecord framing: length,
    its CRC, the record, its CRC; the record is an ``Event`` of tensorboardX's proto)."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            events.append(Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
    return events


def scalars(events: list[Event], tag: str) -> dict[int, float]:
    return {e.step: v.simple_value for e in events for v in e.summary.value if v.tag == tag}


@pytest.fixture
def images(tmp_path):
    return write_sample_images(tmp_path / "imgs", 3, size=48)[0].parent


def test_event_files_hold_loss_lr_samples_and_config_across_an_interrupt(images, tmp_path):
    run_dir = tmp_path / "run"
    common = dict(name="board-toy", init="toy", steps=4, batch=2, sample_every=2, sample_steps=1,
                  checkpoint_every=2, lr="0.01:2, 0.005", cache_dir=tiny_cache_dir(),
                  register=False, run_dir=run_dir)  # fmt: skip

    def interrupt(p):
        if p.phase == "train" and p.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train([images], progress=interrupt, **common)
    # Ctrl-C flushed what was written: steps 1-3 (3 was read before the interrupt).
    folder = run_dir / TENSORBOARD_DIR
    first = read_events(folder)
    assert sorted(scalars(first, "train/loss")) == [1, 2, 3]
    done = train([images], resume=True, **common)
    assert done.tensorboard_dir == folder
    events = read_events(folder)
    # The resumed writer purges what followed the checkpoint (step 2) and goes on.
    purges = [e.step for e in events if e.HasField("session_log")]
    assert purges == [2]
    cut = next(i for i, e in enumerate(events) if e.HasField("session_log"))
    losses = scalars(events[cut:], "train/loss")
    assert sorted(losses) == [3, 4]
    for step, value in losses.items():
        assert value == pytest.approx(done.losses[step - 1], rel=1e-6)
    assert scalars(events, "train/lr") == {1: pytest.approx(0.01), 2: pytest.approx(0.01),
                                          3: pytest.approx(0.005), 4: pytest.approx(0.005)}  # fmt: skip
    shots = {(e.step, v.tag) for e in events for v in e.summary.value if v.HasField("image")}
    assert shots == {(2, "samples/0"), (2, "samples/1"), (4, "samples/0"), (4, "samples/1")}
    image = next(v.image for e in events for v in e.summary.value if v.HasField("image"))
    assert image.encoded_image_string.startswith(b"\x89PNG")
    assert (image.width, image.height) == (32, 32)
    texts = [v for e in events for v in e.summary.value if v.tag.startswith("config")]
    assert texts, [v.tag for e in events for v in e.summary.value]
    shown = texts[-1].tensor.string_val[0].decode()
    assert json.loads(shown.strip("`\n"))["name"] == "board-toy"


def test_a_writer_opened_in_the_same_second_keeps_the_earlier_file(tmp_path, monkeypatch):
    """tensorboardX names event files by the second they were opened: a resume within
    that second used to truncate the interrupted run's events (CI caught it)."""
    import tensorboardX.event_file_writer as efw

    from conceptlib.trainer.tensorboard import TensorBoardLog

    monkeypatch.setattr(efw.time, "time", lambda: 1_700_000_000.25)
    first = TensorBoardLog(tmp_path)
    first.writer.add_scalar("train/lr", 0.01, 1)
    first.writer.close()
    second = TensorBoardLog(tmp_path, purge_step=1)
    second.writer.add_scalar("train/lr", 0.005, 2)
    second.writer.close()
    events = read_events(tmp_path / TENSORBOARD_DIR)
    assert scalars(events, "train/lr") == {1: pytest.approx(0.01), 2: pytest.approx(0.005)}
