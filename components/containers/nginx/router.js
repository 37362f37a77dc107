// Model routing: send each /v1/ request to the pool that serves its `model`.
//
// Runs in nginx's njs (ngx_http_js_module) as the content handler of /v1/,
// after the API key check (rewrite phase). It reads the body nginx has
// buffered once, takes `model` (a JSON body's "model", or the "model" field
// of a multipart form, as audio transcription sends it), finds the pool that
// serves that name (a served name or a LoRA adapter name; an exact,
// case-sensitive match), and redirects internally to that pool's named
// location. A prefix_affinity pool also gets its routing key here, from the
// same parsed body (prefix.js). A request whose model no pool serves, or that
// names none, is answered 404 here with OpenAI's error object: no replica is
// contacted.
//
// GET /v1/models is answered here too, from the generated table.
//
// With named API keys (keys.js, docs/api-keys.md) a key with a model list
// reaches only those models: any other is answered exactly as an unknown
// model, with only its own names as the valid aliases, and /v1/models lists
// only its own. A key with a `max_tokens` cap gets 400 for a generation that
// asks for more, or that does not say (a chat then generates to the end of
// the context). The table's `keys` holds only the keys with such a rule.
//
// The table (models.js) is generated from the pools when the config is
// rendered and sits beside this file; njs loads it once with the config.
//
// Only what njs 0.7.9 (Debian 12's libnginx-mod-http-js) already has:
// js_import, js_content, js_var, relative module imports, r.requestBuffer,
// r.variables, r.internalRedirect, Buffer, crypto, fs.readFileSync.

import crypto from 'crypto';
import fs from 'fs';
import prefix from 'prefix.js';
import table from 'models.js';

const HAS = Object.prototype.hasOwnProperty;

function sendJson(r, status, value) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify(value));
}

// vLLM's ErrorResponse: {"error": {"message", "type", "param", "code"}}.
function notFound(r, message) {
    sendJson(r, 404, { error: { message: message, type: 'NotFoundError', param: 'model', code: 404 } });
}

// The body as bytes. A body over client_body_buffer_size (1m) is in a temp
// file. One announced at 1,000,000 bytes or more reaches the router in the
// location that keeps that file until the request ends, and is read from it
// by $request_body_file (fs, on both versions). Any other (a chunked one)
// has had its file unlinked: njs 0.8.10 reads it through r.requestBuffer (its
// CHANGES: "reading r.requestText or r.requestBuffer from a temp file"),
// 0.7.9 throws and the request names no model. A body over PARSE_LIMIT is
// only scanned for its model.
function bodyBytes(r) {
    const file = r.variables.request_body_file;
    if (file) {
        try {
            return fs.readFileSync(file);
        } catch (e) {
            // unlinked: below
        }
    }
    try {
        return r.requestBuffer;
    } catch (e) {
        r.warn('lb_router: the request body cannot be read: ' + e);
        return undefined;
    }
}

// The value of the form field `model` in a multipart/form-data body, as
// Starlette reads a form (python-multipart): the part whose Content-Disposition
// names `model` (quoted or not, header and parameter names in any case), the
// last one when several do (FormData.get keeps the last).
function multipartModel(body, contentType) {
    const found = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
    if (!found) {
        return undefined;
    }
    const delimiter = '--' + (found[1] || found[2]);
    let model;
    let at = body.indexOf(delimiter);
    while (at >= 0) {
        const headStart = at + delimiter.length + 2;
        const headEnd = body.indexOf('\r\n\r\n', headStart);
        if (headEnd < 0) {
            return model;
        }
        const next = body.indexOf('\r\n' + delimiter, headEnd + 4);
        if (next < 0) {
            return model;
        }
        const head = body.slice(headStart, headEnd).toString();
        const disposition = /^content-disposition:[ \t]*form-data[ \t]*;(.*)$/im.exec(head);
        if (disposition && formName(disposition[1]) === 'model' && !/;[ \t]*filename\*?=/i.test(disposition[1])) {
            model = body.slice(headEnd + 4, next).toString();
        }
        at = next + 2;
    }
    return model;
}

// The `name` parameter of a Content-Disposition's parameters, quoted or not.
function formName(params) {
    const name = /(?:^|;)[ \t]*name[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))/i.exec(params);
    if (!name) {
        return undefined;
    }
    return name[1] !== undefined ? name[1].replace(/\\(.)/g, '$1') : name[2];
}

// Bodies up to this size are parsed whole (the prefix key needs the parsed
// body); larger ones, images or audio as base64 JSON, only scanned for their
// top-level "model": decoding and parsing 10 MB costs the worker about 250 ms,
// the scan about 10 ms. Like the single-model router, a prefix_affinity pool
// routes a larger body by its fallback.
const PARSE_LIMIT = 1048576;

function isSpace(byte) {
    return byte === 32 || byte === 9 || byte === 10 || byte === 13;
}

// The index of the quote closing the JSON string opened at `open`, or -1.
function stringEnd(body, open) {
    let at = open + 1;
    for (;;) {
        at = body.indexOf(34, at);
        if (at < 0) {
            return -1;
        }
        let backslashes = 0;
        while (body[at - 1 - backslashes] === 92) {
            backslashes++;
        }
        if (backslashes % 2 === 0) {
            return at;
        }
        at++;
    }
}

// The value of the top-level key `name` ("model" by default) of a JSON object
// (the last one, as JSON.parse keeps), without decoding the rest: strings are
// skipped with the native Buffer.indexOf, only the bytes between them are
// looked at. A string or a number; null for any other value; undefined when
// there is none or the body is not an object.
function scanModel(body, name) {
    const wanted = name === undefined ? 'model' : name;
    let at = 0;
    while (isSpace(body[at])) {
        at++;
    }
    if (body[at] !== 123) {
        return undefined;
    }
    let depth = 0;
    let found;
    while (at < body.length) {
        const quote = body.indexOf(34, at);
        const stop = quote < 0 ? body.length : quote;
        for (let i = at; i < stop; i++) {
            const byte = body[i];
            if (byte === 123 || byte === 91) {
                depth++;
            } else if (byte === 125 || byte === 93) {
                depth--;
            }
        }
        if (quote < 0) {
            break;
        }
        const close = stringEnd(body, quote);
        if (close < 0) {
            return undefined;
        }
        at = close + 1;
        if (depth !== 1) {
            continue;
        }
        let next = at;
        while (isSpace(body[next])) {
            next++;
        }
        if (body[next] !== 58 || JSON.parse(body.slice(quote, close + 1).toString()) !== wanted) {
            continue;
        }
        next++;
        while (isSpace(body[next])) {
            next++;
        }
        found = null; // a model that is no string names none
        if (body[next] === 34) {
            const end = stringEnd(body, next);
            if (end < 0) {
                return undefined;
            }
            found = JSON.parse(body.slice(next, end + 1).toString());
            at = end + 1;
        } else if (body[next] === 45 || (body[next] >= 48 && body[next] <= 57)) {
            let end = next + 1;
            while (end < body.length && /[0-9.eE+-]/.test(String.fromCharCode(body[end]))) {
                end++;
            }
            found = Number(body.slice(next, end).toString());
            at = end;
        }
    }
    return found;
}

// The encoding Python's json.loads(bytes) reads a body in (json.detect_encoding),
// which is how the replica (Starlette's Request.json) decodes it.
function detectEncoding(b) {
    if (b.length >= 4 && ((b[0] === 0 && b[1] === 0 && b[2] === 0xfe && b[3] === 0xff) ||
        (b[0] === 0xff && b[1] === 0xfe && b[2] === 0 && b[3] === 0))) {
        return b[0] === 0 ? 'utf-32-be' : 'utf-32-le';
    }
    if (b.length >= 2 && b[0] === 0xfe && b[1] === 0xff) {
        return 'utf-16-be';
    }
    if (b.length >= 2 && b[0] === 0xff && b[1] === 0xfe) {
        return 'utf-16-le';
    }
    if (b.length >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) {
        return 'utf-8-sig';
    }
    if (b.length >= 4) {
        if (!b[0]) {
            return b[1] ? 'utf-16-be' : 'utf-32-be';
        }
        if (!b[1]) {
            return b[2] || b[3] ? 'utf-16-le' : 'utf-32-le';
        }
    } else if (b.length === 2) {
        if (!b[0]) {
            return 'utf-16-be';
        }
        if (!b[1]) {
            return 'utf-16-le';
        }
    }
    return 'utf-8';
}

// UTF-16 or UTF-32 bytes as a string (a BOM, if any, dropped).
function decodeWide(b, width, bigEndian) {
    let start = 0;
    const units = [];
    for (let i = 0; i + width <= b.length; i += width) {
        let unit;
        if (width === 2) {
            unit = bigEndian ? (b[i] << 8) | b[i + 1] : b[i] | (b[i + 1] << 8);
        } else {
            unit = bigEndian
                ? ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]) >>> 0
                : ((b[i + 3] << 24) | (b[i + 2] << 16) | (b[i + 1] << 8) | b[i]) >>> 0;
        }
        if (i === 0 && unit === 0xfeff) {
            start = 1;
        }
        units.push(unit);
    }
    let out = '';
    for (let i = start; i < units.length; i += 4096) {
        const chunk = units.slice(i, i + 4096);
        out += width === 2 ? String.fromCharCode.apply(null, chunk) : String.fromCodePoint.apply(null, chunk);
    }
    return out;
}

// JSON.parse, and where it refuses what Python's json accepts (NaN, Infinity,
// -Infinity outside strings), once more with those read as null: they cannot
// change which model is named.
function parsePythonJson(text) {
    try {
        return JSON.parse(text);
    } catch (e) {
        let out = '';
        let at = 0;
        while (at < text.length) {
            const c = text[at];
            if (c === '"') {
                let end = at + 1;
                while (end < text.length && text[end] !== '"') {
                    end += text[end] === '\\' ? 2 : 1;
                }
                out += text.slice(at, end + 1);
                at = end + 1;
            } else if (text.startsWith('NaN', at)) {
                out += 'null';
                at += 3;
            } else if (text.startsWith('-Infinity', at)) {
                out += 'null';
                at += 9;
            } else if (text.startsWith('Infinity', at)) {
                out += 'null';
                at += 8;
            } else {
                out += c;
                at++;
            }
        }
        return JSON.parse(out);
    }
}

// {model, parsed}: the model named (undefined if none) and, for a JSON body
// up to PARSE_LIMIT, the parsed body. A JSON body is read as the replica reads
// it: Python's json on the bytes (encoding detected, a UTF-8 BOM skipped).
function readRequest(r) {
    const body = bodyBytes(r);
    if (body === undefined || body === null || body.length === 0) {
        return {};
    }
    const contentType = r.headersIn['Content-Type'] || '';
    if (/^[ \t]*multipart\/form-data/i.test(contentType)) {
        return { model: multipartModel(body, contentType) };
    }
    const encoding = detectEncoding(body);
    let text;
    if (encoding === 'utf-8' || encoding === 'utf-8-sig') {
        const bytes = encoding === 'utf-8' ? body : body.slice(3);
        if (bytes.length > PARSE_LIMIT) {
            return { model: scanModel(bytes), bytes: bytes };
        }
        text = bytes.toString();
    } else {
        text = decodeWide(body, encoding.startsWith('utf-16') ? 2 : 4, encoding.endsWith('be'));
    }
    const parsed = parsePythonJson(text);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        return {};
    }
    return { model: parsed.model, parsed: parsed };
}

function route(r) {
    let request;
    try {
        request = readRequest(r);
    } catch (e) {
        request = {}; // not JSON, or unreadable: it names no model we can see
    }
    const model = request.model;
    if (typeof model !== 'string' || model.length === 0) {
        notFound(r, table.missing);
        return;
    }
    const policy = keyPolicy(r);
    if (!HAS.call(table.names, model) || (policy && policy.models && !HAS.call(policy.models, model))) {
        // vLLM's own message for a model it does not serve, with every served
        // name (a key's own, for a key with a model list).
        const aliases = policy && policy.models ? policy.aliases : table.aliases;
        notFound(r, 'The model `' + model + '` does not exist. Valid aliases: ' + aliases + '.');
        return;
    }
    if (policy && policy.maxTokens && !tokensAllowed(r, request, policy.maxTokens)) {
        return;
    }
    const pool = table.pools[table.names[model]];
    r.variables.lb_pool = pool.name;
    if (table.keys) {
        r.variables.lb_model = model;
    }
    if (!pool.prefix) {
        r.internalRedirect(pool.location);
        return;
    }
    // prefix_affinity inside the pool: the key prefix.js computes for a single
    // pool, from the body parsed above; no usable prompt -> the pool's fallback.
    let text = '';
    try {
        const limit = Number(r.variables.lb_prefix_chars);
        text = request.parsed !== undefined && limit > 0 ? prefix.routingText(request.parsed, limit) : '';
    } catch (e) {
        text = '';
    }
    if (text.length === 0) {
        r.internalRedirect(pool.fallback);
        return;
    }
    r.variables.lb_prefix_key = crypto.createHash('sha1').update(text).digest('hex');
    r.internalRedirect(pool.location);
}

// The rules of the request's named key, if it has any (keys.js named it).
function keyPolicy(r) {
    if (!table.keys) {
        return undefined;
    }
    const name = r.variables.lb_key_name;
    return name && HAS.call(table.keys, name) ? table.keys[name] : undefined;
}

// What a generation asks for at most, as vLLM reads it: a chat's
// max_completion_tokens, else its max_tokens (none: to the end of the
// context); a completion's max_tokens (none: 16, vLLM's default); a
// response's max_output_tokens. Other paths generate nothing.
const GENERATIONS = {
    '/v1/chat/completions': { fields: ['max_completion_tokens', 'max_tokens'], missing: Infinity },
    '/v1/completions': { fields: ['max_tokens'], missing: 16 },
    '/v1/responses': { fields: ['max_output_tokens'], missing: Infinity },
};

// [value, field, set]: the first of `fields` the body sets, else [missing, the
// last, false].
function askedTokens(request, fields, missing) {
    for (let i = 0; i < fields.length; i++) {
        let value;
        if (request.parsed !== undefined) {
            value = request.parsed[fields[i]];
        } else if (request.bytes !== undefined) {
            value = scanModel(request.bytes, fields[i]);
        }
        if (value !== undefined && value !== null) {
            return [value, fields[i], true];
        }
    }
    return [missing, fields[fields.length - 1], false];
}

function tokensAllowed(r, request, limit) {
    const generation = GENERATIONS[r.uri];
    if (!generation) {
        return true;
    }
    const found = askedTokens(request, generation.fields, generation.missing);
    const asked = found[0];
    const field = found[1];
    if (typeof asked === 'number' && asked <= limit) {
        return true;
    }
    let said = field + ' is ' + JSON.stringify(asked);
    if (!found[2]) {
        said = 'it does not set ' + field + (asked === Infinity ? '' : ' (vLLM\'s default: ' + asked + ')');
    }
    sendJson(r, 400, {
        error: {
            message: 'This API key may ask for at most ' + limit + ' tokens per request, and ' + said +
                '. Set ' + field + ' to ' + limit + ' or less.',
            type: 'BadRequestError',
            param: field,
            code: 400,
        },
    });
    return false;
}

// GET /v1/models: every served name and adapter, as vLLM lists them. `created`
// is the time of the request, as vLLM fills it (a default_factory per card).
function models(r) {
    if (r.method !== 'GET' && r.method !== 'HEAD') {
        r.headersOut['Allow'] = 'GET';
        sendJson(r, 405, { error: { message: 'Method not allowed: use GET for /v1/models.', type: 'MethodNotAllowedError', param: null, code: 405 } });
        return;
    }
    const created = Math.floor(Date.now() / 1000);
    const policy = keyPolicy(r);
    const cards = policy && policy.models
        ? table.cards.filter(function (card) { return HAS.call(policy.models, card.id); })
        : table.cards;
    const data = cards.map(function (card) {
        return {
            id: card.id,
            object: 'model',
            created: created,
            owned_by: 'vllm',
            root: card.root,
            parent: card.parent,
        };
    });
    sendJson(r, 200, { object: 'list', data: data });
}

export default { route, models, multipartModel, scanModel, detectEncoding, parsePythonJson };
