"""The memory estimate: components add up, scale as they should, and `--budget` proposes settings that fit."""

import json
from pathlib import Path

import pytest

from helpers import LLAMA_7B, F, H, L, V
from llm_tuning.cli import main
from llm_tuning.cli.commands import parse_size
from llm_tuning.errors import UserError
from llm_tuning.memory.estimate import CPU_ALLOCATOR_FACTORS, FOUR_BIT_BYTES, SPLIT_COPY_BASELINE_BYTES, cpu_malloc, estimate


def components(folder, *overrides, device="cpu"):
    return estimate(None, [f"model.path={folder}", *overrides], device=device)


def test_tcmalloc_runs_are_estimated_with_their_own_measured_figures(shapes):
    """tcmalloc reuses freed blocks: a smaller baseline and allocator factor than glibc's (memory/estimate.py)."""

    def estimated(allocator):
        return estimate(None, [f"model.path={shapes['llama2-7b']}"], allocator=allocator)["components"]

    glibc, tcmalloc = estimated("glibc"), estimated("tcmalloc")
    assert (glibc["overhead"], tcmalloc["overhead"]) == (730 * 2**20, 620 * 2**20)
    assert tcmalloc["activations"] == pytest.approx(glibc["activations"] * 1.5 / 1.6, rel=1e-9)
    assert estimated("jemalloc") == glibc  # unmeasured mallocs get glibc's figures
    assert {k: v for k, v in tcmalloc.items() if k not in ("overhead", "activations")} == {
        k: v for k, v in glibc.items() if k not in ("overhead", "activations")
    }


def test_components_add_up(shapes):
    report = components(shapes["llama2-7b"], "train.split_step=false")
    assert report["total_bytes"] == sum(report["components"].values())
    assert set(report["components"]) == {"weights", "gradients", "optimizer", "activations", "logits", "overhead"}


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_each_copy_of_a_split_step_adds_its_loss_buffer_gradients_and_baseline(shapes, threads, monkeypatch):
    monkeypatch.setattr("torch.get_num_threads", lambda: threads)  # as on a CPU with that many
    split = components(shapes["llama2-7b"], "train.batch_size=4")
    unsplit = components(shapes["llama2-7b"], "train.batch_size=4", "train.split_step=false")["components"]
    copies = threads - 1
    assert split["components"].get("split_copies", 0) == copies * (
        unsplit["logits"] + 2 * unsplit["gradients"] + SPLIT_COPY_BASELINE_BYTES
    )
    assert {k: v for k, v in split["components"].items() if k != "split_copies"} == unsplit  # activations shared out
    assert components(shapes["llama2-7b"], "train.batch_size=4", device="cuda")["components"].get("split_copies") is None


def test_weights_gradients_and_optimizer_follow_from_what_trains(shapes):
    lora = 4_194_304  # default LoRA on Llama-2-7B
    c = components(shapes["llama2-7b"])["components"]
    assert c["weights"] == 4 * (LLAMA_7B + lora)  # fp32 base plus fp32 adapter
    assert c["gradients"] == 4 * lora and c["optimizer"] == 8 * lora  # AdamW: two fp32 moments
    full = components(shapes["llama2-7b"], "method.name=full", "model.dtype=bfloat16", "train.optimizer=adamw_8bit")["components"]
    assert full["weights"] == 2 * LLAMA_7B and full["gradients"] == 4 * LLAMA_7B and full["optimizer"] == 2 * LLAMA_7B
    assert full["overlap"] == -min(full["gradients"], full["activations"])  # gradients replace freed activations


def test_activations_and_full_logits_are_linear_in_batch_and_sequence(shapes):
    full_logits = "train.loss_chunk_size=0"
    base = components(shapes["llama2-7b"], "train.batch_size=1", "data.max_length=512", full_logits)["components"]
    batch = components(shapes["llama2-7b"], "train.batch_size=4", "data.max_length=512", full_logits)["components"]
    longer = components(shapes["llama2-7b"], "train.batch_size=1", "data.max_length=1024", full_logits)["components"]
    for name in ("activations", "logits"):
        assert batch[name] == pytest.approx(4 * base[name], rel=1e-9) and longer[name] == pytest.approx(2 * base[name], rel=1e-9)
    assert base["logits"] == pytest.approx(3.5 * 512 * V * 4)  # fp32 logits, log-softmax, their gradients


def test_chunked_loss_holds_logits_for_one_chunk(shapes):
    def logits(*overrides):
        return components(shapes["llama2-7b"], "train.loss_chunk_size=256", *overrides)["components"]["logits"]

    assert (
        logits("train.batch_size=8", "data.max_length=1024") == logits("train.batch_size=1", "data.max_length=512") == 256 * V * 4
    )
    assert logits("train.batch_size=1", "data.max_length=128") == 128 * V * 4  # fewer positions than a chunk
    # prompt tuning runs through peft's forward, which computes the full logits
    assert logits("method.name=prompt", "train.batch_size=1", "data.max_length=512") == pytest.approx(3.5 * (512 + 20) * V * 4)


def test_lean_activations_drop_one_intermediate_per_layer_and_token(shapes):
    def activations(lean):
        return components(shapes["llama2-7b"], "data.max_length=512", "train.batch_size=1", f"train.lean_activations={lean}")[
            "components"
        ]["activations"]

    assert activations("false") - activations("true") == pytest.approx(
        L * 512 * F * 4 * CPU_ALLOCATOR_FACTORS[cpu_malloc()], rel=1e-6
    )


def test_checkpointing_keeps_one_hidden_state_per_layer(shapes):
    plain = components(shapes["llama2-7b"], "data.max_length=512")["components"]["activations"]
    checkpointed = components(shapes["llama2-7b"], "data.max_length=512", "train.gradient_checkpointing=true")["components"][
        "activations"
    ]
    assert checkpointed < plain / 5
    assert checkpointed > 32 * 4 * 512 * H * 4  # at least one hidden state per layer and token


def test_each_trained_projection_adds_its_own_input(shapes):
    def activations(*overrides):
        return components(shapes["llama2-7b"], "train.batch_size=1", "data.max_length=512", *overrides)["components"][
            "activations"
        ]

    per_value = 512 * L * 4 * CPU_ALLOCATOR_FACTORS[cpu_malloc()]  # tokens x layers x fp32 x the CPU allocator factor
    q_v = activations("method.target_modules=[q_proj, v_proj]")
    assert activations("method.target_modules=[q_proj]") == q_v  # q, k and v share one input
    assert activations("method.target_modules=[k_proj, o_proj]") == q_v  # attention keeps its output anyway
    assert activations("method.target_modules=[q_proj, v_proj, gate_proj, up_proj]") == pytest.approx(
        q_v + H * per_value, rel=1e-6
    )
    assert activations("method.target_modules=[q_proj, v_proj, down_proj]") == pytest.approx(q_v + F * per_value, rel=1e-6)


def test_int8_matmul_keeps_its_inputs_through_checkpointing(shapes):
    def activations(*overrides):
        return components(shapes["llama2-7b"], "data.max_length=512", "train.gradient_checkpointing=true", *overrides)[
            "components"
        ]["activations"]

    # bitsandbytes' CPU 8-bit matmul holds each linear layer's input outside autograd's saved tensors
    held = 4 * 512 * L * 4 * CPU_ALLOCATOR_FACTORS[cpu_malloc()] * (3 * H + F)
    assert activations("model.quantization=8bit") == pytest.approx(activations("model.quantization=4bit") + held, rel=1e-6)


def test_four_bit_weights_are_about_a_quarter_of_bf16(shapes):
    bf16 = components(shapes["llama2-7b"], "model.dtype=bfloat16")["components"]["weights"]
    nf4 = components(shapes["llama2-7b"], "model.dtype=bfloat16", "model.quantization=4bit")["components"]["weights"]
    lora = 4 * 4_194_304
    unquantized = 2 * V * H + 32 * 2 * H + H  # embeddings and head, norms (fp32 after k-bit preparation)
    linear = LLAMA_7B - unquantized
    assert bf16 - lora == 2 * LLAMA_7B
    assert nf4 - lora == pytest.approx(linear * FOUR_BIT_BYTES[True] + unquantized * 4, rel=1e-9)
    assert 0.25 < (nf4 - lora - unquantized * 4) / (bf16 - lora - unquantized * 2) < 0.27  # 4 bits of 16, plus constants


def test_gpu_adds_context_and_allocator_slack(shapes):
    cpu = components(shapes["llama2-7b"])
    gpu = components(shapes["llama2-7b"], device="cuda")
    assert gpu["components"]["weights"] == cpu["components"]["weights"]
    assert gpu["components"]["overhead"] > 500 * 2**20


def test_budget_proposes_the_largest_batch_that_fits(shapes, capsys):
    assert (
        main(
            [
                "estimate",
                f"model.path={shapes['llama2-7b']}",
                "train.batch_size=8",
                "data.max_length=1024",
                "--device",
                "cuda",
                "--budget",
                "24GiB",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    proposal = report["proposal"]
    assert report["total_bytes"] > 24 * 2**30 >= proposal["total_bytes"]
    settings = dict(item.split("=") for item in proposal["overrides"])
    assert int(settings["train.batch_size"]) * int(settings["train.gradient_accumulation_steps"]) >= 8


def test_sizes_and_bad_sizes():
    assert parse_size("24GiB") == 24 * 2**30 and parse_size("512MiB") == 512 * 2**20 and parse_size("1.5G") == int(1.5 * 2**30)
    with pytest.raises(UserError, match="--budget 'lots'"):
        parse_size("lots")


def test_train_refuses_a_run_that_cannot_fit_and_names_what_would(tiny_llama, records_path, tmp_path, monkeypatch):
    from helpers import run_config
    from llm_tuning import train
    from llm_tuning.memory import budget

    needed = estimate(run_config(tiny_llama, records_path, tmp_path / "run"))["total_bytes"]
    monkeypatch.setattr(budget, "available_bytes", lambda device: needed - 1)
    with pytest.raises(
        UserError, match=r"this run needs about .* GiB \(cpu\) but .* GiB is free; it would fit with .*train.batch_size=\d"
    ):
        train(run_config(tiny_llama, records_path, tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    summary = train(run_config(tiny_llama, records_path, tmp_path / "run", train={"check_memory": False, "max_steps": 1}))
    assert summary["estimated_peak_memory_bytes"] == needed and summary["peak_memory_bytes"] > 0


def deepspeed_file(folder, stage: int, offload: bool = False):
    zero = {"stage": stage, **({"offload_optimizer": {"device": "cpu"}} if offload else {})}
    path = folder / f"zero{stage}{'-offload' if offload else ''}.json"
    path.write_text(json.dumps({"zero_optimization": zero}))
    return path


def test_each_process_holds_what_its_sharding_leaves_it(shapes, tmp_path):
    """--nproc 4: DDP keeps everything per process and adds its gradient buckets; FSDP full_shard and ZeRO-3
    divide weights, gradients and optimizer states, shard_grad_op and ZeRO-2 only the last two; offload moves the
    optimizer states to host memory. Activations and logits are each process's own micro-batch."""
    full = ["method.name=full", "train.optimizer=adamw"]
    one = components(shapes["llama2-7b"], *full)["components"]

    def per_process(*overrides):
        return estimate(None, [f"model.path={shapes['llama2-7b']}", *full, *overrides], processes=4)

    ddp = per_process()
    assert ddp["components"]["ddp_buckets"] == one["gradients"]
    assert {k: ddp["components"][k] for k in one} == one
    assert "DDP" in ddp["assumptions"]["weights"]

    for overrides, weights_divided in (
        (["train.fsdp=full_shard"], True),
        ([f"train.deepspeed={deepspeed_file(tmp_path, 3)}"], True),
        (["train.fsdp=shard_grad_op"], False),
        ([f"train.deepspeed={deepspeed_file(tmp_path, 2)}"], False),
    ):
        report = per_process(*overrides)
        c = report["components"]
        assert c["gradients"] == pytest.approx(one["gradients"] / 4, abs=1)
        assert c["optimizer"] == pytest.approx(one["optimizer"] / 4, abs=1)
        assert c["weights"] == pytest.approx(one["weights"] / (4 if weights_divided else 1), abs=1)
        assert ("gathered_layer" in c) == weights_divided  # a layer at a time gathered whole, next one prefetched
        assert (c["activations"], c["logits"]) == (one["activations"], one["logits"])
        assert report["total_bytes"] < ddp["total_bytes"]
    layer = per_process("train.fsdp=full_shard")["components"]["gathered_layer"]
    assert layer == pytest.approx(2 * one["weights"] * (4 * H * H + 3 * H * F + 2 * H) / LLAMA_7B, rel=1e-6)

    offloaded = per_process(f"train.deepspeed={deepspeed_file(tmp_path, 3, offload=True)}")
    assert offloaded["components"]["optimizer"] == 0
    assert offloaded["host_bytes"] == pytest.approx(one["optimizer"] / 4, abs=1)
    example = per_process(f"train.deepspeed={Path(__file__).parents[2] / 'examples/deepspeed/zero3_offload.json'}")
    assert example["components"]["weights"] == 0 and example["components"]["gathered_layer"] > 0  # offload_param too
    assert example["host_bytes"] == pytest.approx((one["optimizer"] + one["weights"]) / 4, abs=2)


def test_estimate_command_says_per_process_what_it_assumes(shapes, capsys):
    assert main(["estimate", f"model.path={shapes['llama2-7b']}", "--nproc", "2", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "in each of 2 processes" in out
    assert "ddp_buckets" in out and "a full copy in each of the 2 processes (DDP)" in out
