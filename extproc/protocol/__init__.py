"""The wire formats, transport-neutral: OpenAI requests/responses and SSE; ext_proc messages and codec."""
