"""Sharing on the Hub: the folder a repository holds (export + model card), a mocked Hub API, and the
one line when huggingface_hub is missing. Nothing here reaches the network."""

from __future__ import annotations

import importlib
import inspect
import shutil
import sys

import pytest
import torch

import softintrovae
from softintrovae import hub
from softintrovae.errors import UserError

from .conftest import TINY

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "run"
    return softintrovae.train("soft-introvae-8gaussians", out=out, overrides={**TINY, "train.steps": 3, "method.vae_warmup_steps": 1}).run_dir


def same_outputs(a, b) -> bool:
    z = torch.randn(6, a.latents.z_dim, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, *a.input_shape, generator=torch.Generator().manual_seed(1))
    return torch.equal(a.decode(z), b.decode(z)) and all(torch.equal(p, q) for p, q in zip(a.encode(x), b.encode(x)))


def test_a_saved_folder_loads_and_its_card_has_the_config_and_final_metrics(run, tmp_path):
    folder = hub.save_pretrained(run, tmp_path / "shared", repo_id="someone/sivae")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.safetensors"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: softintrovae\n")
    assert 'from_pretrained("someone/sivae")' in card
    assert "## Final metrics" in card and "| gnelbo |" in card and "| kl |" in card
    assert "## Config" in card and "beta_neg: 0.9" in card and "name: soft-introvae-8gaussians" in card
    assert same_outputs(hub.from_pretrained(folder), softintrovae.load(run))
    with pytest.raises(UserError, match="holds no model.safetensors"):
        hub.from_pretrained(tmp_path)


def test_push_and_download_through_a_mocked_hub_api(run, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    remote = tmp_path / "remote"  # what the "Hub" holds, one folder per repository
    calls = []

    def checked(real, *args, **kwargs):
        inspect.signature(real).bind(*args, **kwargs)  # our call fits the real API's signature
        calls.append(real.__name__)

    class FakeApi:
        def __init__(self, *args, **kwargs):
            checked(huggingface_hub.HfApi.__init__, self, *args, **kwargs)

        def create_repo(self, *args, **kwargs):
            checked(huggingface_hub.HfApi.create_repo, self, *args, **kwargs)
            (remote / args[0]).mkdir(parents=True, exist_ok=True)
            return f"https://huggingface.co/{args[0]}"

        def upload_folder(self, *args, **kwargs):
            checked(huggingface_hub.HfApi.upload_folder, self, *args, **kwargs)
            shutil.copytree(kwargs["folder_path"], remote / kwargs["repo_id"], dirs_exist_ok=True)

    def fake_download(*args, **kwargs):
        checked(huggingface_hub.hf_hub_download, *args, **kwargs)
        path = remote / args[0] / args[1]
        if not path.is_file():
            raise FileNotFoundError(f"404 Client Error: {args[0]} not found")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert hub.push(run, "someone/sivae", private=True) == "https://huggingface.co/someone/sivae"
    assert calls == ["__init__", "create_repo", "upload_folder"]
    assert sorted(p.name for p in (remote / "someone" / "sivae").iterdir()) == ["README.md", "model.safetensors"]
    assert same_outputs(hub.from_pretrained("someone/sivae"), softintrovae.load(run))
    with pytest.raises(UserError, match="cannot download model.safetensors of 'someone/other' from the Hub"):
        hub.from_pretrained("someone/other")


def test_without_huggingface_hub_push_and_download_are_one_line_but_folders_work(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now fails
    importlib.reload(hub)  # the module itself imports without it
    for call in (lambda: hub.push(run, "someone/sivae"), lambda: hub.from_pretrained("someone/sivae")):
        with pytest.raises(UserError, match=r"needs huggingface_hub: pip install 'softintrovae\[hub\]'") as error:
            call()
        assert "\n" not in str(error.value)
    assert hub.from_pretrained(hub.save_pretrained(run, tmp_path / "local")).step == 3
