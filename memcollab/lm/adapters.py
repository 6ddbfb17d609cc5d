"""A DSPy adapter for small and local models: a plain chat in the model's own template, fields parsed from text.

DSPy's Chat and JSON adapters describe every field in a long system prompt and ask the model to
reproduce field markers or a JSON object. Models of 0.5-1.5B parameters lose most of their accuracy
that way: they were trained to answer a question in free text. `NaturalAdapter` sends what a person
would type into a chat box (one user message: optional rules, the problem, a one- or two-sentence
instruction; no system prompt) and takes the output fields out of the free-text reply with the same
extractors the graders use.

A signature opts in field by field with `Annotated[str, Natural(...)]` (see `memcollab.signatures`):
inputs say where they go in the conversation, outputs say how they are found in the reply and how a
demo shows them. A signature with an output that has no `Natural` extractor (the distiller's list of
constraints) goes to a fallback adapter (JSON), so one agent can run every program.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dspy
from dspy.utils.exceptions import AdapterParseError

Role = Literal["main", "rules", "context", "previous", "feedback", "hidden", "output"]

#: The inputs of the call being parsed, for extractors that need them (e.g. the code's entry point).
_CALL_INPUTS: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("natural_call_inputs")


@dataclass(frozen=True)
class Natural:
    """How one signature field reads in a plain chat.

    Inputs: `main` (the problem, verbatim; the instruction goes `instruction` of it), `rules` (a numbered
    list placed before the problem under `title`), `context` (a titled section), `previous` (the model's
    own earlier reply, replayed as an assistant turn), `feedback` (the next user turn, `template` with
    `{value}`), `hidden` (given to extractors, never shown). Outputs: `extract(text, inputs)` finds the
    value in the reply ("" = not found), `render(value)` writes it as the model would (for demos).
    """

    role: Role
    title: str = ""
    template: str = "{value}"
    instruction: Literal["before", "after"] = "after"
    extract: Callable[[str, Mapping[str, Any]], str] | None = None
    render: Callable[[str], str] | None = None


def natural_of(field: Any) -> Natural | None:
    """The `Natural` annotation of a signature field, if any."""
    return next((m for m in getattr(field, "metadata", ()) if isinstance(m, Natural)), None)


def _value(example: Any, name: str) -> Any:
    getter = getattr(example, "get", None)
    return getter(name) if callable(getter) else None


class NaturalAdapter(dspy.Adapter):
    """Plain-chat prompts and free-text parsing for signatures whose outputs all have a `Natural` extractor."""

    def __init__(self, fallback: dspy.Adapter | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fallback = fallback or dspy.JSONAdapter()

    # ----- which adapter answers -------------------------------------------------------------
    @staticmethod
    def handles(signature: type[dspy.Signature]) -> bool:
        """Every output is either the chain of thought or has an extractor."""
        for name, field in signature.output_fields.items():
            spec = natural_of(field)
            if name != "reasoning" and (spec is None or spec.extract is None):
                return False
        return True

    def __call__(self, lm, lm_kwargs, signature, demos, inputs):  # type: ignore[override]
        if not self.handles(signature):
            return self.fallback(lm, lm_kwargs, signature, demos, inputs)
        token = _CALL_INPUTS.set(dict(inputs))
        try:
            return super().__call__(lm, lm_kwargs, signature, demos, inputs)
        finally:
            _CALL_INPUTS.reset(token)

    async def acall(self, lm, lm_kwargs, signature, demos, inputs):  # type: ignore[override]
        if not self.handles(signature):
            return await self.fallback.acall(lm, lm_kwargs, signature, demos, inputs)
        token = _CALL_INPUTS.set(dict(inputs))
        try:
            return await super().acall(lm, lm_kwargs, signature, demos, inputs)
        finally:
            _CALL_INPUTS.reset(token)

    # ----- prompt --------------------------------------------------------------------------------
    def format(self, signature, demos, inputs) -> list[dict[str, Any]]:  # type: ignore[override]
        messages: list[dict[str, Any]] = []
        for demo in demos:
            reply = self.render_reply(signature, demo)
            if reply:  # a demo without outputs teaches nothing: skip it
                messages += self.conversation(signature, demo)
                messages.append({"role": "assistant", "content": reply})
        return messages + self.conversation(signature, inputs)

    def conversation(self, signature: type[dspy.Signature], values: Any) -> list[dict[str, Any]]:
        """The user turn for `values`; with a previous attempt and feedback, the follow-up turns too."""
        rules, context, main = [], [], []
        previous = feedback = ""
        feedback_spec: Natural | None = None
        for name, field in signature.input_fields.items():
            value = _value(values, name)
            text = "" if value is None else str(value).strip()
            spec = natural_of(field) or Natural("context", title=name.replace("_", " ").capitalize())
            if not text or spec.role == "hidden":
                continue
            if spec.role == "main":
                main.append(self._with_instruction(signature.instructions, text, spec))
            elif spec.role == "rules":
                rules.append(f"{spec.title}\n{text}" if spec.title else text)
            elif spec.role == "previous":
                previous = text
            elif spec.role == "feedback":
                feedback, feedback_spec = text, spec
            else:
                context.append(f"{spec.title}:\n{text}" if spec.title else text)
        if not main:  # no field marked main: the instruction leads the message
            context.insert(0, signature.instructions.strip())
        first = "\n\n".join([*rules, *context, *main])
        turns = [{"role": "user", "content": first}]
        if previous and feedback_spec is not None:
            turns.append({"role": "assistant", "content": self._replay(signature, previous)})
            turns.append({"role": "user", "content": feedback_spec.template.format(value=feedback)})
        return turns

    @staticmethod
    def _with_instruction(instructions: str, text: str, spec: Natural) -> str:
        instruction = instructions.strip()
        if not instruction:
            return text
        return f"{instruction}\n\n{text}" if spec.instruction == "before" else f"{text}\n\n{instruction}"

    @staticmethod
    def _replay(signature: type[dspy.Signature], previous: str) -> str:
        """The earlier attempt as the model wrote it: rendered like the first output that has a renderer."""
        for field in signature.output_fields.values():
            spec = natural_of(field)
            if spec is not None and spec.render is not None:
                return spec.render(previous)
        return previous

    def render_reply(self, signature: type[dspy.Signature], example: Any) -> str:
        """A demo's outputs written as the model would answer: its reasoning, then each output's rendering."""
        parts = []
        reasoning = _value(example, "reasoning")
        if reasoning:
            parts.append(str(reasoning).strip())
        for name, field in signature.output_fields.items():
            value = _value(example, name)
            spec = natural_of(field)
            if name == "reasoning" or value in (None, "") or spec is None:
                continue
            parts.append(spec.render(str(value)) if spec.render else str(value))
        return "\n\n".join(parts) if len(parts) > int(bool(reasoning)) else ""

    def format_field_with_value(self, fields_with_values: Mapping[Any, Any], role: str = "assistant") -> str:
        """A reply made of these values, verbatim (DSPy's DummyLM scripts replies through this hook)."""
        return "\n\n".join(str(value) for value in fields_with_values.values())

    # ----- parse ---------------------------------------------------------------------------------
    def parse(self, signature, completion: str) -> dict[str, Any]:  # type: ignore[override]
        inputs = _CALL_INPUTS.get({})
        values: dict[str, Any] = {}
        for name, field in signature.output_fields.items():
            spec = natural_of(field)
            if name == "reasoning" or spec is None or spec.extract is None:
                values[name] = completion
                continue
            values[name] = spec.extract(completion, inputs)
            if not values[name]:
                raise AdapterParseError(
                    adapter_name=type(self).__name__,
                    signature=signature,
                    lm_response=completion,
                    message=f"no {name} found in the reply",
                    parsed_result=values,
                )
        return values
