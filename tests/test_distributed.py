"""distributed.py in one process: who this process is, from torchrun's environment, and every collective step
answering as a single process would (the multi-process behaviour is tested end to end in test_launch.py)."""

from llm_tuning.distributed import (
    World,
    any_process,
    each_process,
    from_main,
    local_main_first,
    lost_peer,
    main_writes,
    mean_over_processes,
    world,
)


def test_world_comes_from_torchruns_environment(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert world() == World(0, 0, 1) and world().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    here = world()
    assert (here.rank, here.local_rank, here.size, here.is_main, here.is_local_main) == (3, 1, 4, False, False)


def test_one_process_answers_for_itself():
    assert any_process(True) and not any_process(False)
    assert each_process(7) == [7]
    assert from_main({"library": "torch"}) == {"library": "torch"}
    assert mean_over_processes(2.5) == 2.5
    with local_main_first():
        pass
    with main_writes() as writer:
        assert writer


def test_a_lost_peer_is_told_from_other_errors():
    assert lost_peer(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:14215: Connection reset by peer"))
    assert not lost_peer(RuntimeError("shape mismatch"))
