"""Chat templates: how a conversation becomes the text a causal LM is trained on and prompted with.

A tokenizer that has a chat template (Qwen2.5, Llama 3, SmolLM2, Phi-3, Mistral instruct) is used as it is, so the
fine-tuned model is prompted exactly as it was trained. Base models without one get a named default (`plain`, or
`chatml`), which is then saved into the run's tokenizer: `model/` prompts the same way without Slingshot.

The conversation is cut into segments by rendering growing prefixes of it: the text before each assistant turn
(rendered with the generation prompt) is context, the assistant turn itself is trained. Training and prompting
therefore see the same text, and the loss falls only on what the model must learn to write.
"""

from __future__ import annotations

from slingshot.errors import DataError

# Every template writes newlines as {{ '\n' }}: Transformers compiles templates with trim_blocks, which would
# swallow a literal newline after a {% %} tag.
TEMPLATES = {
    # Role labels in plain words: no new tokens for a base model's vocabulary to learn. EOS ends every answer.
    "plain": (
        "{% if bos_token and bos_token != eos_token %}{{ bos_token }}{% endif %}"
        "{% for message in messages %}"
        "{% if not loop.first %}{{ '\\n' }}{% endif %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}{{ '\\n' }}"
        "{% elif message['role'] == 'user' %}User: {{ message['content'] }}"
        "{% else %}Assistant: {{ message['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '\\n' }}Assistant:{% endif %}"
    ),
    # OpenAI's ChatML, as Qwen and SmolLM2 use it.
    "chatml": (
        "{% for message in messages %}"
        "<|im_start|>{{ message['role'] }}{{ '\\n' }}{{ message['content'] }}<|im_end|>{{ '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
    ),
}


def choose_template(tokenizer, name: str) -> str:
    """The Jinja template for `name`: auto = the tokenizer's own when it has one, else `plain`."""
    if name == "auto":
        return tokenizer.chat_template or TEMPLATES["plain"]
    return TEMPLATES[name]


def render(tokenizer, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def conversation_segments(tokenizer, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The conversation as (text, trained) pieces in order; trained pieces are the assistant turns.

    Raises DataError when the template renders a conversation's prefix differently from its start (a template
    that rewrites earlier turns), since the trained text would then not be what the model is prompted with.
    """
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:index], generation_prompt=True)
        after = render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not before.startswith(done) or not after.startswith(before):
            raise DataError("the chat template renders an earlier part of a conversation differently once a reply "
                            "follows, so the prompt would not match the training text",
                            "set generation.template: plain (or chatml) instead of the tokenizer's own template")
        segments += [(before[len(done):], False), (after[len(before):], True)]
        done = after
    return segments


def encode_conversation(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and their labels: the id on assistant tokens, -100 (no loss) elsewhere.

    The last assistant turn ends with EOS (appended when the template does not write it), so that the model
    learns to stop. Segments are tokenized one by one, as the prompt alone is at generation time.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for text, trained in conversation_segments(tokenizer, messages):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if trained else [-100] * len(ids)
    if input_ids and input_ids[-1] != tokenizer.eos_token_id:
        input_ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return input_ids, labels


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the conversation so far followed by the generation prompt: what the model continues."""
    return tokenizer(render(tokenizer, messages, generation_prompt=True), add_special_tokens=False)["input_ids"]
