"""Loading data for generative fine-tuning (task generation and seq2seq): every row becomes a conversation, a list of
{role, content} messages.

Three shapes are read, from any file `read_rows` reads (JSONL, JSON, CSV, TSV, Parquet) or a hub dataset:
  - chat: a `messages` column, [{"role": "system"|"user"|"assistant", "content": "..."}, ...], as `docs2qa`'s
    chat/train.jsonl and most chat datasets are written;
  - prompt/completion: two text columns, becoming one user turn and one assistant turn;
  - prompt alone (to predict): one user turn, the model writes the answer.
The reference answer of a conversation is its last assistant turn. An encoder-decoder reads the turns before it
as one source text (`source_text`), so source/target pairs are prompt/completion columns named in the recipe.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from slingshot.data import SPLITS, LoadedData, Rows, Skipped, data_sources, read_rows, sample, stratified_split
from slingshot.errors import DataError
from slingshot.recipe import GenerationSection, Recipe

ROLES = ("system", "user", "assistant")


def conversation(record: dict[str, Any], settings: GenerationSection, where: str) -> list[dict[str, str]]:
    """A row as messages (system prompt first when the settings give one and the row has none).

    Raises DataError, naming the file and line, for messages that are not a list of {role, content} objects.
    """
    if settings.messages_column in record and record[settings.messages_column] is not None:
        raw = record[settings.messages_column]
        if not isinstance(raw, list):
            raise DataError(f"{where}: '{settings.messages_column}' must be a list of messages, got {type(raw).__name__}",
                            'write [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]')
        messages = []
        for position, message in enumerate(raw):
            if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise DataError(f"{where}: message {position} is not a {{role, content}} object with role "
                                f"{'/'.join(ROLES)} (got {str(message)[:80]})",
                                "give every message a role (system, user or assistant) and a string content")
            messages.append({"role": message["role"], "content": message["content"]})
    else:
        prompt = record.get(settings.prompt_column)
        messages = [{"role": "user", "content": "" if prompt is None else str(prompt)}]
        completion = record.get(settings.completion_column)
        if completion is not None:
            messages.append({"role": "assistant", "content": str(completion)})
    if settings.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": settings.system_prompt})
    return messages


def usable_conversations(rows: Rows, settings: GenerationSection, *, need_answer: bool) -> tuple[list[dict], Skipped]:
    """{messages, row} examples; rows without a prompt, or (need_answer) without an answer last, are skipped."""
    has_chat = settings.messages_column in rows.columns
    if not has_chat and settings.prompt_column not in rows.columns:
        raise DataError(f"{rows.source}: neither a '{settings.messages_column}' column (chat) nor a "
                        f"'{settings.prompt_column}' column (prompt/completion); columns found: "
                        f"{', '.join(rows.columns) or '(none)'}",
                        "set generation.messages_column, or generation.prompt_column and generation.completion_column")
    if need_answer and not has_chat and settings.completion_column not in rows.columns:
        raise DataError(f"{rows.source}: column '{settings.completion_column}' not found; columns found: "
                        f"{', '.join(rows.columns)}", "set generation.completion_column to the column of answers")
    examples, skipped = [], Skipped()
    for record, line in zip(rows.records, rows.lines):
        where = f"{rows.source}:{line}"
        messages = conversation(record, settings, where)
        if need_answer:
            while messages and messages[-1]["role"] != "assistant":
                messages.pop()  # trailing turns nobody answers teach nothing
            if not messages:
                skipped.add("no answer (no assistant turn)", where)
                continue
            if not messages[-1]["content"].strip():
                skipped.add("empty answer", where)
                continue
        if not any(m["role"] == "user" and m["content"].strip() for m in prompt_messages(messages)):
            skipped.add("no prompt (empty or missing user turn)", where)
            continue
        examples.append({"messages": messages, "row": line})
    return examples, skipped


def reference_answer(messages: list[dict[str, str]]) -> str | None:
    return messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else None


def prompt_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its reference answer: what the model is asked."""
    return messages[:-1] if reference_answer(messages) is not None else messages


def source_text(messages: list[dict[str, str]]) -> str:
    """The prompt of a conversation as one plain text, what an encoder-decoder (task seq2seq) reads.

    A single question stays as it is (docs2qa's question -> answer); a system prompt goes first on its own line,
    as T5's task prefixes do; earlier turns are written out as 'User: ...' and 'Assistant: ...' lines.
    """
    asked = prompt_messages(messages)
    system = [m["content"] for m in asked if m["role"] == "system"]
    turns = [m for m in asked if m["role"] != "system"]
    if len(turns) == 1:
        lines = [turns[0]["content"]]
    else:
        lines = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in turns]
    return "\n".join(system + lines)


def load_chat_data(recipe: Recipe, *, splits: tuple[str, ...] = SPLITS) -> LoadedData:
    """Every split the recipe names, as conversations; eval held out of train (seeded) when no eval file is given."""
    settings = recipe.generation
    sources = data_sources(recipe)
    raw: dict[str, list[dict]] = {}
    skipped: dict[str, Skipped] = {}
    shown: dict[str, str] = {}
    for split in SPLITS:
        if split not in sources or (split != "train" and split not in splits):
            continue
        source = sources[split]
        if source.endswith("#eval"):
            try:
                rows = read_rows(source.removesuffix("#eval"), config=recipe.data.dataset_config, split="eval")
            except DataError:
                continue  # a hub dataset without an eval split: hold one out of train below
        else:
            rows = read_rows(source, config=recipe.data.dataset_config, split=split)
        shown[split] = rows.source
        raw[split], skipped[split] = usable_conversations(rows, settings, need_answer=True)
        if not raw[split]:
            reasons = ", ".join(f"{count} {reason}" for reason, count in skipped[split].reasons.items())
            raise DataError(f"{rows.source}: no usable conversations ({reasons or 'the file is empty'})",
                            "each row needs a prompt and an answer (chat messages or prompt/completion columns)")
    if "eval" not in raw:
        raw["train"], raw["eval"] = stratified_split(raw["train"], recipe.data.eval_fraction, recipe.data.seed, False)
        shown["eval"] = f"{shown['train']} (held out {recipe.data.eval_fraction:.0%}, seed {recipe.data.seed})"
        skipped["eval"] = Skipped()
        if not raw["train"] or not raw["eval"]:
            raise DataError(f"{shown['train']}: too few conversations to hold out an eval split", "set data.eval")
    limits = {"train": recipe.data.limit.train, "eval": recipe.data.limit.eval, "test": recipe.data.limit.test}
    datasets = {split: Dataset.from_list(sample(examples, limits[split], recipe.data.seed))
                for split, examples in raw.items() if split in splits}
    return LoadedData(datasets, None, shown, skipped)


def load_chat_file(path: str, recipe: Recipe, *, need_answer: bool | None) -> tuple[Dataset, Skipped]:
    """One file scored (need_answer=True) or answered (None: answers kept as references when present)."""
    rows = read_rows(path)
    examples, skipped = usable_conversations(rows, recipe.generation, need_answer=bool(need_answer))
    if not examples:
        raise DataError(f"{rows.source}: no usable prompts", "each row needs a user prompt")
    return Dataset.from_list(examples), skipped


def prompts_dataset(prompts: list[str], settings: GenerationSection) -> Dataset:
    """Prompts typed on the command line, as a split the generation task can answer."""
    examples = [{"messages": conversation({settings.prompt_column: p}, settings, "--prompt"), "row": i}
                for i, p in enumerate(prompts, start=1)]
    return Dataset.from_list(examples)
