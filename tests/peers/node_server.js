// Node.js http test server: a fixed-length route, a streamed (chunked) route, an error route, and
// /chain, the leaf of the trace-context chain tests.
const http = require('http');
const port = Number(process.argv[2]);
http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/hello') {
    res.setHeader('Content-Type', 'text/plain');
    res.end('hi from node');
  } else if (path === '/stream') {
    res.write('part one,');
    setTimeout(() => { res.write('part two,'); res.end('done'); }, 20);
  } else if (path === '/chain') {
    res.end('leaf');
  } else if (path === '/fail') {
    res.statusCode = 503;
    res.end('unavailable');
  } else {
    res.statusCode = 404;
    res.end('nope');
  }
}).listen(port, process.argv[3] || '127.0.0.1', () => console.log('ready'));
