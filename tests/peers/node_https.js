// Node.js HTTPS (Node's own statically linked OpenSSL, driven through memory BIOs).
//
//     node node_https.js server PORT CERT KEY
//     node node_https.js client PORT CERT PATH...
//     node node_https.js fresh-client PORT CERT PATH...
//
// The server answers /missing with 404, anything else with 200. The client waits for a line on
// stdin, then requests each path in turn on one keep-alive connection (fresh-client: a new TLS
// connection for each, so freed SSL objects are reused), prints one JSON line per response and
// "done".
const https = require('https');
const fs = require('fs');
const [mode, portArg, cert, ...rest] = process.argv.slice(2);
const port = Number(portArg);
if (mode === 'server') {
  const options = { cert: fs.readFileSync(cert), key: fs.readFileSync(rest[0]) };
  https.createServer(options, (req, res) => {
    res.statusCode = req.url.startsWith('/missing') ? 404 : 200;
    res.end(`node tls ${req.url}`);
  }).listen(port, '127.0.0.1', () => console.log('ready'));
} else {
  console.log('ready');
  process.stdin.once('data', async () => {
    const keepAlive = mode !== 'fresh-client';
    const agent = new https.Agent({ keepAlive, maxSockets: 1, ca: fs.readFileSync(cert) });
    for (const path of rest) {
      await new Promise((resolve, reject) => {
        const options = { host: '127.0.0.1', servername: 'localhost', port, path, agent,
          headers: { 'user-agent': 'node-https-client' } };
        https.get(options, (res) => {
          res.resume();
          res.on('end', () => {
            console.log(JSON.stringify({ path, status: res.statusCode }));
            resolve();
          });
        }).on('error', reject);
      });
    }
    agent.destroy();
    console.log('done');
    process.exit(0);
  });
}
