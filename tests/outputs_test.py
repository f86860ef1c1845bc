"""Output folders: jaxtune replaces only files it wrote, never its inputs, names stay inside."""

import json
import os

import pytest

from jaxtune import outputs
from jaxtune.errors import OutputError


def folder(path, **kw):
  return outputs.Folder(path, command="jaxtune test", flag="--out", **kw)


def write(f: outputs.Folder, name: str, text: str = "x"):
  f.path(name).write_text(text)


def test_rerun_into_its_own_output_is_fine_and_recorded(tmp_path):
  out = tmp_path / "out"
  f = folder(out)
  write(f, "a.json")
  f.commit()
  record = json.loads((out / outputs.MANIFEST).read_text())["files"]
  assert record["a.json"]["by"] == "jaxtune test" and record["a.json"]["size"] == 1
  f = folder(out, expected=("a.json",))
  write(f, "a.json", "yy")
  f.commit()
  assert (out / "a.json").read_text() == "yy"


def test_folder_with_a_foreign_file_is_refused_unless_overwrite(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(OutputError, match=r"--out=.*holds files jaxtune did not write \(notes.txt\).*--overwrite"):
    folder(tmp_path)
  f = folder(tmp_path, overwrite=True)
  write(f, "a.json")
  f.commit()
  assert (tmp_path / "notes.txt").read_text() == "mine"
  f = folder(tmp_path, overwrite=True)  # a rerun keeps the foreign file (it never lists it)
  f.commit()
  assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_written_file_edited_since_is_no_longer_ours(tmp_path):
  f = folder(tmp_path)
  write(f, "README.md")
  f.commit()
  (tmp_path / "README.md").write_text("my own notes, longer")
  with pytest.raises(OutputError, match="README.md"):
    folder(tmp_path)


def test_many_foreign_files_are_summarised(tmp_path):
  for i in range(30):
    (tmp_path / f"f{i:02d}").write_text("")
  with pytest.raises(OutputError, match=r"f00, f01, f02 and more"):
    folder(tmp_path)


def test_output_never_replaces_an_input_even_with_overwrite(tmp_path):
  data = tmp_path / "train.jsonl"
  data.write_text("{}\n")
  with pytest.raises(OutputError, match=r"writing train.jsonl would replace .*train.jsonl, an input"):
    folder(tmp_path, overwrite=True, inputs=[data], expected=("train.jsonl",))
  f = folder(tmp_path, overwrite=True, inputs=[data])
  with pytest.raises(OutputError, match="would replace"):
    f.path("train.jsonl")
  assert data.read_text() == "{}\n"
  link = tmp_path / "sub"
  link.mkdir()
  os.symlink(data, link / "train.jsonl")  # through a symlink: still the input
  with pytest.raises(OutputError, match="would replace"):
    folder(link, overwrite=True, inputs=[data]).path("train.jsonl")


def test_folder_inside_an_input_folder_is_refused(tmp_path):
  ckpts = tmp_path / "checkpoints"
  (ckpts / "4").mkdir(parents=True)
  for out in (ckpts, ckpts / "4", ckpts / "new"):
    with pytest.raises(OutputError, match="inside .*checkpoints, which this command reads"):
      folder(out, overwrite=True, inputs=[ckpts])


def test_a_file_is_not_a_folder(tmp_path):
  (tmp_path / "f").write_text("")
  with pytest.raises(OutputError, match="a file, not a folder"):
    folder(tmp_path / "f", overwrite=True)


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", "..", ".", "", "  ", "a\\b", "a\0b"])
def test_names_stay_in_their_folder(tmp_path, name):
  with pytest.raises(OutputError, match="plain name"):
    outputs.check_name(name, "--name")
  with pytest.raises(OutputError, match="plain name"):
    folder(tmp_path).path(name)


def test_shared_folder_checks_only_its_own_names(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "eval_x.json").write_text("someone's")
  f = outputs.Folder(tmp_path, command="jaxtune eval", flag="--name", own=False)
  write(f, "eval_y.json")
  f.commit()
  with pytest.raises(OutputError, match=r"eval_x.json: exists and was not written by jaxtune.*--overwrite"):
    outputs.Folder(tmp_path, command="jaxtune eval", flag="--name", own=False,
                   expected=("eval_x.json",))
  g = outputs.Folder(tmp_path, command="jaxtune eval", flag="--name", own=False)
  write(g, "eval_z.json")
  g.commit()  # eval_y.json stays: a shared folder keeps other runs' outputs
  files = json.loads((tmp_path / outputs.MANIFEST).read_text())["files"]
  assert set(files) == {"eval_y.json", "eval_z.json"} and (tmp_path / "eval_y.json").exists()


def test_publish_moves_staged_files_and_drops_its_own_stale_ones(tmp_path):
  out = tmp_path / "out"
  f = folder(out)
  stage = f.staging()
  (stage / "sub").mkdir()
  for name in ("model-1.safetensors", "index.json", "sub/config.json"):
    (stage / name).write_text(name)
  f.publish(stage)
  assert not stage.exists() and (out / "sub" / "config.json").read_text() == "sub/config.json"
  f = folder(out)  # a rerun: its own files are no obstacle; the shard index of last time goes
  stage = f.staging()
  (stage / "model.safetensors").write_text("whole")
  f.publish(stage)
  files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
  assert files == [outputs.MANIFEST, "model.safetensors"]


def test_publish_refuses_before_moving_anything(tmp_path):
  (tmp_path / "config.json").write_text("theirs")
  f = folder(tmp_path, overwrite=True, inputs=[tmp_path / "config.json"])
  stage = f.staging()
  (stage / "a.bin").write_text("a")
  (stage / "config.json").write_text("ours")
  with pytest.raises(OutputError, match="would replace"):
    f.publish(stage)
  assert not (tmp_path / "a.bin").exists() and (tmp_path / "config.json").read_text() == "theirs"


def test_a_single_output_file_never_replaces_an_input_or_an_existing_file(tmp_path):
  prompts, out = tmp_path / "prompts.txt", tmp_path / "out.jsonl"
  prompts.write_text("hi\n")
  with pytest.raises(OutputError, match="an input of this command"):
    outputs.check_new_file(str(prompts), flag="--out", overwrite=True, inputs=(str(prompts),))
  assert outputs.check_new_file(str(out), flag="--out", overwrite=False, inputs=(str(prompts),)) == out
  out.write_text("earlier\n")
  with pytest.raises(OutputError, match="exists.*--overwrite"):
    outputs.check_new_file(str(out), flag="--out", overwrite=False)
  outputs.check_new_file(str(out), flag="--out", overwrite=True)
  with pytest.raises(OutputError, match="a folder, not a file"):
    outputs.check_new_file(str(tmp_path), flag="--out", overwrite=True)
  assert out.read_text() == "earlier\n" and prompts.read_text() == "hi\n"
