// Node.js relay: an event loop serving many requests on one thread.
//
//     node node_relay.js PORT NEXT_PORT
//
// GET /chain?QUERY calls http://127.0.0.1:NEXT_PORT/chain?QUERY through a keep-alive agent and
// answers 200. With mode=forward in the query it forwards the incoming traceparent/tracestate
// unchanged; otherwise it propagates nothing.
const http = require('http');
const port = Number(process.argv[2]);
const nextPort = Number(process.argv[3]);
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const headers = {};
  if (url.searchParams.get('mode') === 'forward') {
    for (const h of ['traceparent', 'tracestate']) {
      if (req.headers[h]) headers[h] = req.headers[h];
    }
  }
  // A little delay so that requests overlap on the event loop.
  setTimeout(() => {
    http.get({ port: nextPort, host: '127.0.0.1', path: req.url, headers, agent }, (up) => {
      up.resume();
      up.on('end', () => res.end('relayed ' + up.statusCode));
    }).on('error', () => { res.statusCode = 502; res.end('failed'); });
  }, 5);
}).listen(port, '127.0.0.1', () => console.log('ready'));
