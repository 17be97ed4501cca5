/** The OpenAI routes floodgate proxies itself (model routing, limits, cache); one list for all. */
export const OPENAI_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] as const;
export type OpenAIRoute = (typeof OPENAI_ROUTES)[number];
