"""Renders chat templates with jinja2 the way transformers' apply_chat_template does (a sandboxed
environment with trim_blocks and lstrip_blocks, the loopcontrols extension, `raise_exception`, `strftime_now`
pinned to a fixed date, and `tojson` as json.dumps with ensure_ascii=False), writing cases.json: per template,
per conversation, the prompt text, or the error when the template raises. The templates are written here in
the layouts of Llama-3 (plain), Llama-3.1 / 3.2 (a dated system block, no tools in use), Zephyr
(TinyLlama-Chat), ChatML with a default system turn (SmolLM2), Llama-2 ([INST] and <<SYS>>), Phi-3 and Gemma;
`features` exercises the Jinja and Python constructs chat templates use. The crate must render the same text.
"""
import datetime
import json
import os

import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
DATE = datetime.datetime(2025, 3, 5)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

LLAMA32 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

CHATML_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Constructs seen in chat templates: namespace, loop variables, break / continue, slicing, Python string and
# dict methods, tojson (with and without indent), filters, tests, whitespace control, strftime_now.
FEATURES = """{%- set ns = namespace(users=0, last='') -%}
{%- for message in messages -%}
    {%- if message.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif -%}
    {%- set ns.last = message['content'] -%}
{%- endfor -%}
[{{ strftime_now('%A %d %B %Y, day %j') }}] users={{ ns.users }} of {{ messages | length }}
{% for message in messages %}
  {% if message.role == 'assistant' and loop.last %}{% break %}{% endif %}
  {% if message.content.strip() == '' %}{% continue %}{% endif %}
{{ loop.index }}/{{ loop.length }}{{ ' first' if loop.first }}{{ ' last' if loop.last }}: {{ message.role | upper }}
  words={{ message.content.split() | length }} starts_hi={{ message.content.lower().startswith('hi') }}
  {%- for key, value in message.items() %} {{ key }}={{ value | tojson }}{% endfor %}

{% endfor %}
{{- messages[-1:] | map(attribute='role') | join(',') }} {{ (messages | first).role }} {{ ns.last[:5] | replace(' ', '_') }}
{{ {'k': [1, 2.5, none, true], 'name': ns.last} | tojson(indent=2) }}
{{ messages[0] | tojson }}
{{ 'tools' if tools is defined else 'no tools' }}, {{ custom | default('fallback') }}, {{ 'x' in ns.last }}
{%- if add_generation_prompt %}
<generate>
{%- endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}],
    [{"role": "system", "content": "  You are terse. \n"}, {"role": "user", "content": "Hi\n"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": " Blue. "},
     {"role": "user", "content": "Another?"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "x"},
     {"role": "assistant", "content": "y"}],
    [{"role": "user", "content": "Hi there, <b>it's</b> &amp; \"quoted\" {{ 1 + 1 }} {% raw %} é 日本\n\ttab"},
     {"role": "assistant", "content": "  "}, {"role": "user", "content": "hi again x"}],
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
]


class TemplateError(Exception):
    pass


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def render(template, messages, add_generation_prompt):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: DATE.strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            bos_token="<|begin_of_text|>", eos_token="</s>")


def main():
    templates = {"llama3": LLAMA3, "llama3.2": LLAMA32, "zephyr": ZEPHYR, "chatml": CHATML_DEFAULT_SYSTEM,
                 "llama2": LLAMA2, "phi3": PHI3, "gemma": GEMMA, "features": FEATURES}
    out = {"date": DATE.strftime("%d %b %Y"), "days": (DATE - datetime.datetime(1970, 1, 1)).days,
           "templates": templates, "cases": []}
    for name, template in templates.items():
        for messages in CONVERSATIONS:
            for agp in (True, False):
                case = {"template": name, "messages": messages, "add_generation_prompt": agp}
                try:
                    case["prompt"] = render(template, messages, agp)
                except TemplateError as e:
                    case["error"] = str(e)
                out["cases"].append(case)
    with open(os.path.join(HERE, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
