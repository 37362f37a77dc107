// Named API keys: the presented key's digest, and the usage a replica reports.
//
// Runs in nginx's njs (ngx_http_js_module). `digest` is the js_set handler of
// $lb_key_digest: the SHA-256 (hex) of the key in `Authorization: Bearer
// <key>`, read as the map $lb_authorization reads it (scheme in any case,
// trailing blanks dropped, as vLLM reads it). The secret key file maps
// digests to names, so nginx never holds a named key (docs/api-keys.md).
//
// `usage` is a js_body_filter where a replica answers: it passes every byte
// on unchanged and keeps the last `"usage": {...}` seen (a JSON response's,
// or a stream's final chunk when the client asked with
// stream_options.include_usage) in $lb_prompt_tokens and
// $lb_completion_tokens, which the metrics log sends to the exporter.
//
// njs 0.7.9 (Debian 12's libnginx-mod-http-js): js_set, js_var,
// js_body_filter with buffer_type=buffer, r.sendBuffer, crypto, Buffer. Each
// request runs in its own copy of the VM, so module variables are per request.

import crypto from 'crypto';

let presented;

function digest(r) {
    if (presented === undefined) {
        const authorization = r.variables.lb_authorization || '';
        // "Bearer <key>" or empty; an empty key names no key.
        presented = authorization.length > 7
            ? crypto.createHash('sha256').update(authorization.slice(7)).digest('hex')
            : '';
    }
    return presented;
}

// The tail of what was sent so far: a `"usage"` object split between two
// chunks is found in the next one. vLLM's usage object is about 150 bytes
// (with prompt_tokens_details, nested, a little more). A count counts once
// the character after its digits has arrived.
const KEEP = 512;
const PROMPT = /"prompt_tokens"\s*:\s*(\d+)[^\d]/;
const COMPLETION = /"completion_tokens"\s*:\s*(\d+)[^\d]/;
let tail;

function readUsage(r, text) {
    const prompt = PROMPT.exec(text);
    const completion = COMPLETION.exec(text);
    if (!prompt || !completion) {
        return false;
    }
    r.variables.lb_prompt_tokens = prompt[1];
    r.variables.lb_completion_tokens = completion[1];
    return true;
}

function usage(r, data, flags) {
    r.sendBuffer(data, flags);
    const seen = tail !== undefined && tail.length > 0 ? Buffer.concat([tail, data]) : data;
    const at = seen.lastIndexOf('"usage"');
    if (at >= 0 && !readUsage(r, seen.slice(at, at + KEEP).toString()) && seen.length - at < KEEP) {
        // Not whole yet: keep it from its start for the next chunk.
        tail = seen.slice(at);
        return;
    }
    tail = seen.length > KEEP ? seen.slice(seen.length - KEEP) : seen;
}

export default { digest, usage };
