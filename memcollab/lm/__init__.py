"""Language models for agents: configs, preflight checks, and the backends that serve them.

`config` (AgentConfig, YAML agents, overrides), `preflight` (can this agent run
here?), `factory` (AgentConfig -> DSPy LM and adapter, the response cache),
`local` (in-process llama-cpp-python), `server` (llama-server: build, supervise,
serve), `catalog` / `assemble` (the embedded GGUF models), `adapters` (how small
models are prompted and parsed). Nothing is imported here, so importing one
part never loads the others.
"""
