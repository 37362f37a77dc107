// prefix_affinity: route a request on the leading part of its prompt.
//
// Runs in nginx's njs (ngx_http_js_module), as the content handler of /v1/.
// It reads the JSON body nginx has already buffered, takes the first N
// characters of the prompt (N from $lb_prefix_chars), puts a digest of them in
// $lb_prefix_key and redirects internally to @lb_prefix, whose upstream hashes
// that key on a consistent-hash ring with a per-replica bound (max_conns).
// Anything it cannot read (no body, not JSON, no prompt) goes to @lb_fallback
// (least_conn) instead, and so does a body nginx spilled to a temp file (over
// client_body_buffer_size): it is never read here. njs 0.7.9 throws on reading
// one; njs 0.8.10 (the official nginx:1.28.0 image's) reads the file and this
// would parse megabytes in the worker, stalling every request it serves
// (njs CHANGES 0.8.10, "reading r.requestText or r.requestBuffer from a temp
// file"). $request_body_file names that file, so the two behave alike. It
// never answers the client itself, so no error from here can become a 5xx.
//
// Only what njs 0.7.9 (Debian 12's libnginx-mod-http-js) already has: js_import,
// js_content, js_var, r.requestText, r.variables, r.internalRedirect, crypto.

import crypto from 'crypto';

const PREFIX_LOCATION = '@lb_prefix';
const FALLBACK_LOCATION = '@lb_fallback';

// The text of a message's `content`: a string, or OpenAI content parts.
function contentText(content) {
    if (typeof content === 'string') {
        return content;
    }
    if (!Array.isArray(content)) {
        return '';
    }
    let out = '';
    for (let i = 0; i < content.length; i++) {
        const part = content[i];
        if (typeof part === 'string') {
            out += part;
        } else if (part !== null && typeof part === 'object' && typeof part.text === 'string') {
            out += part.text;
        }
    }
    return out;
}

// Chat: the messages in order (system prompt first, then the earliest turns),
// each with its role, up to `limit` characters. These are what lead the
// prompt vLLM builds from the chat template, so they decide its cached prefix.
function chatPrefix(messages, limit) {
    let out = '';
    for (let i = 0; i < messages.length && out.length < limit; i++) {
        const message = messages[i];
        if (message === null || typeof message !== 'object') {
            continue;
        }
        const role = typeof message.role === 'string' ? message.role : '';
        out += '<|' + role + '|>' + contentText(message.content) + '\n';
    }
    return out.slice(0, limit);
}

// Completions: a string, a list of token ids, or a batch (its first prompt).
function completionPrefix(prompt, limit) {
    if (Array.isArray(prompt) && prompt.length > 0 && typeof prompt[0] !== 'number') {
        prompt = prompt[0];
    }
    if (typeof prompt === 'string') {
        return prompt.slice(0, limit);
    }
    if (Array.isArray(prompt)) {
        let out = '';
        for (let i = 0; i < prompt.length && out.length < limit; i++) {
            if (typeof prompt[i] !== 'number') {
                return '';
            }
            out += prompt[i] + ',';
        }
        return out.slice(0, limit);
    }
    return '';
}

// The routing key of a parsed body, or '' when it has no usable prompt.
function routingText(body, limit) {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        return '';
    }
    let prefix = '';
    if (Array.isArray(body.messages)) {
        prefix = chatPrefix(body.messages, limit);
    } else if (body.prompt !== undefined) {
        prefix = completionPrefix(body.prompt, limit);
    }
    if (prefix.length === 0) {
        return '';
    }
    // The model too: different models (or adapters) never share a cache.
    const model = typeof body.model === 'string' ? body.model : '';
    return model + '\n' + prefix;
}

function route(r) {
    if (r.variables.request_body_file) {
        r.internalRedirect(FALLBACK_LOCATION);
        return;
    }
    let text = '';
    try {
        const limit = Number(r.variables.lb_prefix_chars);
        const body = r.requestText;
        if (typeof body === 'string' && body.length > 0 && limit > 0) {
            text = routingText(JSON.parse(body), limit);
        }
    } catch (e) {
        text = '';
    }
    if (text.length === 0) {
        r.internalRedirect(FALLBACK_LOCATION);
        return;
    }
    r.variables.lb_prefix_key = crypto.createHash('sha1').update(text).digest('hex');
    r.internalRedirect(PREFIX_LOCATION);
}

export default { route, routingText };
