"""Prompt templates (golden texts), reply parsing (never crashes), conversation token deltas."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_rl.registry import RegistryError
from prompts import (
    PARSERS,
    TEMPLATES,
    ConversationTokens,
    PromptContext,
    PromptTemplate,
    chat_prompt_ids,
    get_template,
    load_template_dir,
    parse_tagged,
    parse_whole,
    template_name_for_env,
)
from trainers.models import build_tiny_model

ALF_CTX = PromptContext(
    task="put a clean apple in fridge",
    observation="You arrive at countertop 1. On the countertop 1, you see a apple 1.",
    history=[
        ("-= Welcome =-\n\nYou are in the middle of a room.", "go to cabinet 1"),
        ("You arrive at cabinet 1. The cabinet 1 is closed.", "open cabinet 1"),
        ("You open the cabinet 1. It is empty.", "go to countertop 1"),
    ],
    admissible_actions=["take apple 1 from countertop 1", "go to fridge 1", "look"],
)

INSTRUCTION = (
    "Now it's your turn to take an action.\n"
    "First reason step by step about the current situation; this reasoning MUST be enclosed within "
    "<think> </think> tags.\n"
    "Then choose one admissible action for the current step and present it within <action> </action> tags."
)


def test_alfworld_per_step_golden():
    text = get_template("alfworld").render_per_step(ALF_CTX, history_k=2)
    assert text == (
        "You are an expert agent operating in the ALFRED embodied household environment. "
        "Your task is to: put a clean apple in fridge\n"
        "Prior to this step, you have already taken 3 step(s). Below are the most recent 2 observations and the "
        "corresponding actions you took:\n"
        "[Observation 2: 'You arrive at cabinet 1. The cabinet 1 is closed.', Action 2: 'open cabinet 1']\n"
        "[Observation 3: 'You open the cabinet 1. It is empty.', Action 3: 'go to countertop 1']\n"
        "You are now at step 4 and your current observation is: You arrive at countertop 1. On the countertop 1, "
        "you see a apple 1.\n"
        "Your admissible actions of the current situation are: "
        "['take apple 1 from countertop 1', 'go to fridge 1', 'look'].\n\n" + INSTRUCTION
    )


def test_alfworld_act_prompts_of_consecutive_turns_share_their_start_through_the_earlier_actions():
    # What prefix caching can reuse from one turn to the next: the instruction, the task and every earlier
    # action come first; what changes each turn (step number, recent observations, admissible actions) after.
    act = get_template("alfworld_act")
    history = [("You are in the middle of a room.", "go to cabinet 1")] + list(ALF_CTX.history)
    for t in range(1, len(history)):
        before = act.render_per_step(PromptContext(ALF_CTX.task, "obs a", history[:t], ["look"]), history_k=2)
        after = act.render_per_step(PromptContext(ALF_CTX.task, "obs b", history[:t + 1], ["look", "x"]), history_k=2)
        actions = ", ".join(a for _o, a in history[:t])
        shared = before[: before.index(actions) + len(actions)]
        assert shared.endswith(f"Your task is to: put a clean apple in fridge\nYour actions so far: {actions}")
        assert after.startswith(shared)


def test_alfworld_first_turn_and_history_window():
    t = get_template("alfworld")
    first = PromptContext(task="t", observation="obs\n  two lines", admissible_actions=["look"])
    assert t.render_per_step(first, 2) == t.render_first(first) == (
        "You are an expert agent operating in the ALFRED embodied household environment. Your task is to: t\n"
        "Your current observation is: obs\n  two lines\n"
        "Your admissible actions of the current situation are: ['look'].\n\n" + INSTRUCTION
    )
    all3 = t.render_per_step(ALF_CTX, 5)
    assert "most recent 3 observations" in all3 and "[Observation 1: '-= Welcome =- You are in the middle" in all3
    none = t.render_per_step(ALF_CTX, 0)
    assert "most recent 0 observations" in none and "[Observation" not in none and INSTRUCTION in none


def test_math_and_generic_golden():
    math = get_template("math")
    problem = "What is 7 + 12?\n\nPut your final answer within \\boxed{}."
    ctx = PromptContext(task="What is 7 + 12?", observation=problem)
    assert math.render_first(ctx) == problem
    later = PromptContext(
        task="What is 7 + 12?",
        observation="Your answer 18 is incorrect. Try again.",
        history=[(problem, "7 + 12 = \\boxed{18}")],
        initial_observation=problem,
    )
    assert math.render_per_step(later, 2) == (
        problem + "\n\nYou have already made 1 attempt(s). Your most recent 1 attempt(s) and the feedback you got:\n"
        "[Observation 1: 'What is 7 + 12? Put your final answer within \\boxed{}.', Action 1: '7 + 12 = \\boxed{18}']\n"
        "Feedback on your last attempt: Your answer 18 is incorrect. Try again."
    )
    assert math.render_turn(later) == "Your answer 18 is incorrect. Try again."
    assert math.parser == "whole"
    generic = get_template(None)
    assert generic.name == "generic"
    assert generic.render_first(PromptContext(task="reach the door", observation="A hall.")) == (
        "You are an agent acting in a text environment. Your task is to: reach the door\n"
        "Your current observation is: A hall.\n\n"
        "First reason step by step within <think> </think> tags, then give exactly one action within "
        "<action> </action> tags."
    )
    with_actions = generic.render_turn(PromptContext(task="x", observation="A hall.", admissible_actions=["go north"]))
    assert with_actions == (
        "Observation: A hall.\nYour admissible actions are: ['go north'].\n"
        "Reason within <think> </think> tags, then give exactly one action within <action> </action> tags."
    )


def test_observation_text_is_never_interpreted():
    ctx = PromptContext(task="pay $5 ${task}", observation="braces {x} and $observation and \\boxed{}")
    text = get_template("generic").render_first(ctx)
    assert "pay $5 ${task}" in text and "braces {x} and $observation and \\boxed{}" in text


def test_template_selection_and_registration(tmp_path):
    class Env:
        class unwrapped:
            metadata = {"prompt_template": "math"}

    class Plain:
        metadata: dict = {}

    assert template_name_for_env(Env()) == "math"
    assert template_name_for_env(Plain()) == "generic"
    with pytest.raises(RegistryError, match="Did you mean 'alfworld'"):
        get_template("alfwrld")
    with pytest.raises(FileNotFoundError, match="mine_first.txt"):
        load_template_dir("mine", tmp_path)
    for name, text in (("mine_first.txt", "Go: ${observation}\n"), ("mine.txt", "${history}"), ("mine_turn.txt", "$observation")):
        (tmp_path / name).write_text(text)
    mine = load_template_dir("mine", tmp_path, parser="whole")
    assert mine.render_first(PromptContext(task="t", observation="o")) == "Go: o"
    assert "mine" not in TEMPLATES  # loading does not register
    with pytest.raises(ValueError, match="unknown or malformed variable.*obsrvation"):
        PromptTemplate(name="bad", first="${obsrvation}", per_step="", turn="")
    with pytest.raises(RegistryError, match="reply parser"):
        PromptTemplate(name="bad", first="", per_step="", turn="", parser="json")


@pytest.mark.parametrize(
    "reply,action,error",
    [
        ("<think>apple is on the counter</think>\n<action>take apple 1 from countertop 1</action>",
         "take apple 1 from countertop 1", None),
        ("<THINK>x</THINK><Action> 'go to  fridge 1'\n</Action>", "go to fridge 1", None),
        ("<think>x</think><action>look</action> trailing text", "look", None),
        ("<think>x</think> go to fridge 1", None, "no <action>"),
        ("<think>x</think><action>go to fridge 1", None, "unclosed <action>"),
        ("<think>x</think><action>look</action><action>inventory</action>", None, "2 <action> blocks"),
        ("<think>x</think><action>  </action>", None, "empty"),
        ("<action>look</action>", None, "no <think>"),
        ("<action>look</action><think>late</think>", None, "before <action>"),
        ("<think>x</think><action><think>look</action>", None, "nested"),
        ("", None, "no <action>"),
    ],
)
def test_parse_tagged(reply, action, error):
    parsed = parse_tagged(reply)
    assert parsed.action == action
    assert parsed.valid is (error is None)
    if error:
        assert error in parsed.error
        assert parsed.env_action == " ".join(reply.split())[-200:]  # the env still gets feedback-worthy text
    else:
        assert parsed.env_action == action


def test_parse_tagged_without_think_requirement_and_whole():
    assert parse_tagged("<action>look</action>", require_think=False).action == "look"
    assert parse_whole("so \\boxed{19}").action == "so \\boxed{19}"
    assert parse_whole("  \n").valid is False
    assert parse_tagged(None).valid is False  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(["<think>", "</think>", "<action>", "</action>", "<ACTION>", "<", ">", "'", "\n", "\x00"]),
        ),
        max_size=20,
    ).map("".join)
)
def test_parsers_never_crash(reply):
    for parsed in (parse_tagged(reply), parse_whole(reply), PARSERS.get("verl_agent")(reply)):
        assert isinstance(parsed.env_action, str)
        assert parsed.valid is (parsed.action is not None)
        assert parsed.valid or parsed.error
    tagged = parse_tagged(reply)
    if tagged.valid:
        assert tagged.action and tagged.action == " ".join(tagged.action.split())



@pytest.mark.parametrize(
    "reply, action, env_action, error",
    [
        ("<think>x</think><action>Go To  Shelf 1 </action>", "go to  shelf 1", "go to  shelf 1", None),  # lowercased, inner spaces kept
        ("</think> late? <action>look</action> <think>", "look", "look", None),  # both think tags, any order
        ("<think>x</think><action>look</action><action>inventory</action>", "look", "look", None),  # the first block
        ("<think>x</think></action> then <action>look", "", "", None),  # </action> first: an empty action, as there
        ("<action>Look</action>", None, "look", "no <think> and </think>"),  # charged, but the env plays it
        ("<think>看</think><action>look</action>", None, "look", "CJK"),
        ("<think>x</think> I Will Go To The Fridge Now, ok?", None, " i will go to the fridge now, ok?"[-30:], "no <action>"),
        ("<think>x</think><action>Go to\nFridge", None, ">x</think><action>go to\nfridge", "unclosed"),
    ],
)
def test_parse_verl_agent_follows_verl_agents_alfworld_rules(reply, action, env_action, error):
    parsed = PARSERS.get("verl_agent")(reply)
    assert (parsed.action, parsed.env_action, parsed.valid) == (action, env_action, error is None)
    assert error is None or error in parsed.error


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120).filter(lambda t: "<action>" not in t.lower() or "</action>" not in t.lower()))
def test_parse_verl_agent_sends_the_lowercased_last_30_characters_without_an_action_block(reply):
    parsed = PARSERS.get("verl_agent")(reply)
    assert not parsed.valid and parsed.action is None and parsed.env_action == reply.lower()[-30:]


def test_parse_huge_reply_is_bounded():
    reply = "<think>" + "x" * 1_000_000 + "</think><action>look</action>"
    assert parse_tagged(reply).valid is False  # the action lies beyond the parsed prefix
    assert len(parse_tagged(reply).env_action) <= 200


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tiny")))


def test_conversation_deltas_rebuild_the_chat_template(tok):
    conv = ConversationTokens(tok)
    first = conv.first("task and first observation")
    assert first == chat_prompt_ids(tok, "task and first observation")
    eos = tok.eos_token_id
    # A reply that ended with EOS, and one cut by the length limit (no EOS).
    reply_ids = tok("<think>hm</think><action>look</action>", add_special_tokens=False)["input_ids"]
    for response in (reply_ids + [eos], reply_ids):
        delta = conv.next("second observation", response)
        full = tok.decode(first + response + delta)
        expected = tok.apply_chat_template(
            [
                {"role": "user", "content": "task and first observation"},
                {"role": "assistant", "content": "<think>hm</think><action>look</action>"},
                {"role": "user", "content": "second observation"},
            ],
            add_generation_prompt=True,
            tokenize=False,
        )
        assert full == expected
