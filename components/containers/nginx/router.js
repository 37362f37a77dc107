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
// The table (models.js) is generated from the pools when the config is
// rendered and sits beside this file; njs loads it once with the config.
//
// Only what njs 0.7.9 (Debian 12's libnginx-mod-http-js) already has:
// js_import, js_content, js_var, relative module imports, r.requestBuffer,
// r.variables, r.internalRedirect, Buffer, crypto.

import crypto from 'crypto';
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

// The body as bytes. The config sizes client_body_buffer_size to the largest
// body it accepts, so every body is in memory; one nginx kept in a temp file
// anyway cannot be read by njs 0.7.9 (it throws) and counts as naming no model;
// njs 0.8.10 reads it from the file (its CHANGES: "reading r.requestText or
// r.requestBuffer from a temp file"), and a body over PARSE_LIMIT is only
// scanned for its model either way.
function bodyBytes(r) {
    try {
        return r.requestBuffer;
    } catch (e) {
        return undefined;
    }
}

// The value of the form field `model` in a multipart/form-data body.
function multipartModel(body, contentType) {
    const found = /boundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
    if (!found) {
        return undefined;
    }
    const delimiter = '--' + (found[1] || found[2]);
    let at = body.indexOf(delimiter);
    while (at >= 0) {
        const headStart = at + delimiter.length + 2;
        const headEnd = body.indexOf('\r\n\r\n', headStart);
        if (headEnd < 0) {
            return undefined;
        }
        const next = body.indexOf('\r\n' + delimiter, headEnd + 4);
        if (next < 0) {
            return undefined;
        }
        const head = body.slice(headStart, headEnd).toString();
        if (/^content-disposition:[ \t]*form-data;[ \t]*name="model"[ \t]*(;|$)/im.test(head)) {
            return body.slice(headEnd + 4, next).toString();
        }
        at = next + 2;
    }
    return undefined;
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

// The value of the top-level key "model" of a JSON object (the last one, as
// JSON.parse keeps), without decoding the rest: strings are skipped with the
// native Buffer.indexOf, only the bytes between them are looked at.
// undefined when there is none or the body is not an object.
function scanModel(body) {
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
        if (body[next] !== 58 || JSON.parse(body.slice(quote, close + 1).toString()) !== 'model') {
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
        }
    }
    return found;
}

// {model, parsed}: the model named (undefined if none) and, for a JSON body
// up to PARSE_LIMIT, the parsed body.
function readRequest(r) {
    const body = bodyBytes(r);
    if (body === undefined || body === null || body.length === 0) {
        return {};
    }
    const contentType = r.headersIn['Content-Type'] || '';
    if (/^multipart\/form-data/i.test(contentType)) {
        return { model: multipartModel(body, contentType) };
    }
    if (body.length > PARSE_LIMIT) {
        return { model: scanModel(body) };
    }
    const parsed = JSON.parse(body.toString());
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
    if (!HAS.call(table.names, model)) {
        // vLLM's own message for a model it does not serve, with every served name.
        notFound(r, 'The model `' + model + '` does not exist. Valid aliases: ' + table.aliases + '.');
        return;
    }
    const pool = table.pools[table.names[model]];
    r.variables.lb_pool = pool.name;
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

// GET /v1/models: every served name and adapter, as vLLM lists them. `created`
// is the time of the request, as vLLM fills it (a default_factory per card).
function models(r) {
    if (r.method !== 'GET' && r.method !== 'HEAD') {
        r.headersOut['Allow'] = 'GET';
        sendJson(r, 405, { error: { message: 'Method not allowed: use GET for /v1/models.', type: 'MethodNotAllowedError', param: null, code: 405 } });
        return;
    }
    const created = Math.floor(Date.now() / 1000);
    const data = table.cards.map(function (card) {
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

export default { route, models, multipartModel, scanModel };
