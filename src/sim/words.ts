/**
 * Vocabulary of the simulated model. Every entry is a single token under ./tokenizer.ts (letters
 * only), so the usage a response reports equals countTokens() of its text.
 */
export const WORDS: readonly string[] = `
  the of and to in is that for it as with was on be by this are from or an at which not can have
  more their we will model token batch queue server request latency throughput memory cache kernel
  tensor layer weight gradient prompt answer question context window sequence attention decode
  prefill stream network cluster replica gateway budget limit priority deadline signal health
  probe backend fleet route balance load fast slow small large quiet steady simple careful clear
  bright early late often rarely always never maybe perhaps indeed still river mountain forest
  garden harbor lantern meadow valley island engine bridge market library letter story number
  pattern reason people system process result method example problem moment measure design runs
  waits serves counts builds keeps moves holds finds shows grows makes takes gives learns writes
  reads sends turns opens closes starts under over between through after before during without
  within across first second last next every each some many few most other same
`
  .trim()
  .split(/\s+/);
