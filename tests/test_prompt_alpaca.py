"""The Alpaca prompt a base model is asked with is exactly the one it was trained on."""

from protege.prompts import alpaca


def test_generation_prompt_is_the_training_text_up_to_the_answer() -> None:
    msgs = [{"role": "user", "content": "Translate to French.\n\nGood morning"}]
    answer = {"role": "assistant", "content": "Bonjour"}
    trained, spans = alpaca.render(msgs + [answer], eos="</s>")
    asked = alpaca.prompt(msgs)
    assert trained.startswith(asked) and asked.endswith("### Response:\n")
    assert "### Input:\nGood morning" in asked and alpaca.PREAMBLE_INPUT in asked
    assert [trained[a:b] for a, b in spans] == ["Bonjour</s>"]


def test_no_input_section_without_input_and_later_turns_append_blocks() -> None:
    msgs = [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"},
            {"role": "user", "content": "Another?"}]
    asked = alpaca.prompt(msgs)
    assert "### Input:" not in asked and alpaca.PREAMBLE in asked
    assert asked.endswith("7\n\n### Instruction:\nAnother?\n\n### Response:\n")
    text, _ = alpaca.render(msgs)  # without the generation prompt, no dangling Response header
    assert not text.endswith("### Response:\n")
