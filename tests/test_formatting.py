from core.generate.formatting import IGNORE, EncodedDataset, Formatter, PadCollator


def test_labels_cover_only_the_target_and_eos(tokenizer):
    for fmt in ("chat", "plain"):
        f = Formatter(tokenizer, fmt, "Q: {input}")
        enc = f.encode({"input": "What is two plus two?", "target": "four"})
        n_prompt = len(f.prompt_ids("What is two plus two?"))
        assert enc["labels"][:n_prompt] == [IGNORE] * n_prompt
        target = enc["labels"][n_prompt:]
        assert target[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(target[:-1]).strip() == "four"
        assert enc["input_ids"][n_prompt:] == target


def test_chat_format_uses_the_chat_template(tokenizer):
    text = Formatter(tokenizer, "chat", "{input}").prompt_text("hello {there}")
    assert "<|im_start|>user" in text and "hello {there}" in text and text.endswith("<|im_start|>assistant\n")
    assert Formatter(tokenizer, "plain", "In: {input}").prompt_text("x") == "In: x\n"


def test_long_inputs_are_truncated_keeping_the_generation_prompt(tokenizer):
    f = Formatter(tokenizer, "chat", "{input}", max_input_tokens=32)
    ids = f.prompt_ids("word " * 500)
    assert len(ids) == 32
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_collator_pads_dynamically_on_the_right(tokenizer):
    f = Formatter(tokenizer, "plain")
    ds = EncodedDataset([{"input": "a", "target": "b"}, {"input": "a much longer input here", "target": "c"}], f)
    batch = PadCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    width = max(ds.lengths())
    assert batch["input_ids"].shape == (2, width)
    short = len(ds[0]["input_ids"])
    assert batch["attention_mask"][0].tolist() == [1] * short + [0] * (width - short)
    assert (batch["labels"][0, short:] == IGNORE).all()


def test_clean_output_stops_at_end_of_turn(tokenizer):
    f = Formatter(tokenizer, "chat")
    assert f.clean_output(" Paris.<|im_end|>\n<|im_start|>user") == "Paris."
