// The balancer's /health: 200 while every pool has a replica that can serve,
// else 503 with the API's error object naming the pools that cannot.
//
// Runs in nginx's njs as the content handler of /health and /health/<model>.
// Each pool is probed by a subrequest to its internal probe location, which
// proxies `GET /health` to the pool's upstream through a one-second shared
// cache (components/lb/health.py says why); all pools are asked at once.
// `/health/<model>` or `/health?model=<model>` asks only the pool that
// serves that name.
//
// Only what njs 0.7.9 (Debian 12's libnginx-mod-http-js) has: js_content,
// r.subrequest returning a Promise, Promise.all, r.args, r.return.

import table from 'models.js';

const HEALTH = table.health;

function sendJson(r, status, value) {
    r.headersOut['Content-Type'] = 'application/json';
    r.headersOut['Cache-Control'] = 'no-store';
    if (status === 503) {
        r.headersOut['Retry-After'] = HEALTH.retryAfter;
    }
    r.return(status, JSON.stringify(value) + '\n');
}

function error(status, type, message, param) {
    return { error: { message: message, type: type, param: param, code: status } };
}

// The model a per-pool request names: /health/<model> or ?model=<model>;
// undefined for plain /health.
function askedModel(r) {
    const prefix = '/health/';
    if (r.uri.length > prefix.length && r.uri.slice(0, prefix.length) === prefix) {
        return r.uri.slice(prefix.length);
    }
    if (r.uri === prefix) {
        return '';
    }
    const model = r.args.model;
    if (Array.isArray(model)) {
        return model[model.length - 1];
    }
    return model;
}

function poolsFor(model) {
    if (model === undefined) {
        return HEALTH.pools;
    }
    return HEALTH.pools.filter(function (pool) {
        return pool.models.indexOf(model) >= 0;
    });
}

function describe(pool) {
    return pool.models.length > 0 ? 'pool ' + pool.name + ' (' + pool.models.join(', ') + ')' : 'pool ' + pool.name;
}

function health(r) {
    if (r.method !== 'GET' && r.method !== 'HEAD') {
        r.headersOut['Allow'] = 'GET, HEAD';
        sendJson(r, 405, error(405, 'MethodNotAllowedError', 'Use GET or HEAD for /health.', null));
        return;
    }
    const model = askedModel(r);
    const pools = poolsFor(model);
    if (pools.length === 0) {
        const names = [];
        HEALTH.pools.forEach(function (pool) {
            Array.prototype.push.apply(names, pool.models);
        });
        // With named API keys the list is left out: a key sees only its own
        // models (GET /v1/models), and /health asks for no key.
        let hint = names.length > 0 ? 'Served models: ' + names.join(', ') + '.' : 'This balancer has one pool: ask /health.';
        if (table.keys && names.length > 0) {
            hint = 'GET /v1/models lists the models your API key may use.';
        }
        sendJson(r, 404, error(404, 'NotFoundError', 'No pool serves the model `' + model + '`. ' + hint, 'model'));
        return;
    }
    Promise.all(
        pools.map(function (pool) {
            return r.subrequest(pool.probe).then(
                function (reply) {
                    return reply.status === 200;
                },
                function () {
                    return false;
                }
            );
        })
    ).then(
        function (up) {
            const states = {};
            const down = [];
            pools.forEach(function (pool, i) {
                states[pool.name] = up[i] ? 'up' : 'down';
                if (!up[i]) {
                    down.push(describe(pool));
                }
            });
            if (down.length === 0) {
                sendJson(r, 200, { status: 'ok', pools: states });
                return;
            }
            const body = error(
                503,
                'ServiceUnavailableError',
                'No replica can serve ' + down.join('; ') + ': every replica is down, restarting or failing its /health.',
                null
            );
            body.pools = states;
            sendJson(r, 503, body);
        },
        function (e) {
            sendJson(r, 500, error(500, 'InternalServerError', 'The health check failed: ' + e, null));
        }
    );
}

export default { health };
