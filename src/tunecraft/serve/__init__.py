"""Deploy-time serving: the generation engine (shared with `chat` and eval) and the OpenAI-compatible API.

Import the engine from `tunecraft.serve.engine`; the HTTP app (`tunecraft.serve.app`) needs the
[serve] extra (FastAPI, uvicorn) and is imported only by `tunecraft serve`.
"""
