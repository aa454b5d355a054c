// Node.js HTTP/2 over cleartext (prior knowledge), server and client.
//
//     node node_h2.js server PORT
//     node node_h2.js client PORT PATH...
//
// The server answers /missing with 404 and anything else with 200. The client waits for a line
// on stdin, then requests each path on one connection, concurrently (multiplexed streams).
const http2 = require('http2');
const [mode, portArg, ...paths] = process.argv.slice(2);
const port = Number(portArg);
if (mode === 'server') {
  http2.createServer((req, res) => {
    res.statusCode = req.url.startsWith('/missing') ? 404 : 200;
    res.setHeader('content-type', 'text/plain');
    res.end(`h2 ${req.method} ${req.url}`);
  }).listen(port, '127.0.0.1', () => console.log('ready'));
} else {
  console.log('ready');
  process.stdin.once('data', () => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    let left = paths.length;
    for (const path of paths) {
      const req = session.request({ ':path': path, 'user-agent': 'node-h2-client' });
      req.on('response', (headers) => {
        req.resume();
        req.on('end', () => {
          console.log(JSON.stringify({ path, status: headers[':status'] }));
          if (--left === 0) {
            session.close(() => { console.log('done'); process.exit(0); });
          }
        });
      });
      req.end();
    }
  });
}
