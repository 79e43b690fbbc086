"""Prompts: what the model sees and how its reply becomes an action (env ↔ rollout).

:mod:`prompts.render` turns an observation (plus task and history) into prompt text
from the template files in ``prompts/templates``; :mod:`prompts.parse` turns the
model's reply back into an environment action, never crashing on malformed output.
"""

from prompts.parse import PARSERS, ParsedAction, parse_tagged, parse_whole
from prompts.render import (
    TEMPLATES,
    ConversationTokens,
    PromptContext,
    PromptTemplate,
    chat_prompt_ids,
    get_template,
    messages_prompt_ids,
    load_template_dir,
    register_template,
    template_name_for_env,
)

__all__ = [
    "PARSERS",
    "ParsedAction",
    "parse_tagged",
    "parse_whole",
    "TEMPLATES",
    "ConversationTokens",
    "PromptContext",
    "PromptTemplate",
    "chat_prompt_ids",
    "messages_prompt_ids",
    "get_template",
    "load_template_dir",
    "register_template",
    "template_name_for_env",
]
