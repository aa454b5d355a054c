// One service of a chain, in Java: com.sun.net.httpserver with a fixed thread pool (threads are
// reused across requests and connections) calling the next service with HttpURLConnection, whose
// keep-alive cache shares connections between threads.
//
//     java Chain.java PORT [NEXT_URL]
//
// GET /chain?QUERY calls NEXT_URL/chain?QUERY and answers 200 (502 when the call failed).
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

public class Chain {
    static String next;

    static int call(String pathAndQuery) {
        try {
            HttpURLConnection c = (HttpURLConnection) new URL(next + pathAndQuery).openConnection();
            c.setConnectTimeout(10000);
            c.setReadTimeout(10000);
            int status = c.getResponseCode();
            try (InputStream in = status < 400 ? c.getInputStream() : c.getErrorStream()) {
                if (in != null) {
                    in.readAllBytes();
                }
            }
            return status;
        } catch (Exception e) {
            return 599;
        }
    }

    static void handle(HttpExchange ex) throws java.io.IOException {
        String path = ex.getRequestURI().getPath();
        String query = ex.getRequestURI().getRawQuery();
        int status = 200;
        if (next != null && path.equals("/chain")) {
            status = call("/chain" + (query == null ? "" : "?" + query));
        } else if (!path.equals("/chain")) {
            status = 404;
        }
        byte[] body = (path + " " + status + "\n").getBytes(StandardCharsets.UTF_8);
        ex.sendResponseHeaders(status < 500 ? 200 : 502, body.length);
        try (OutputStream out = ex.getResponseBody()) {
            out.write(body);
        }
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        next = args.length > 1 ? args[1] : null;
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        server.createContext("/", Chain::handle);
        server.setExecutor(Executors.newFixedThreadPool(8));
        server.start();
        System.out.println("ready");
    }
}
