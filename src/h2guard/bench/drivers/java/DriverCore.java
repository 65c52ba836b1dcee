import java.io.FileDescriptor;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.InputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManager;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509TrustManager;

/**
 * What the two Java drivers share: the spec, the CA trust, the wave runner and the stdout
 * protocol. Each driver supplies only {@link Caller}, the one request done with its library, so
 * the two differ in nothing but the HTTP client they measure.
 */
final class DriverCore {
    private DriverCore() {}

    /** A spec the driver cannot run: reported on stderr, exit status 2. */
    static final class BadSpec extends Exception {
        private static final long serialVersionUID = 1L;

        BadSpec(String message) {
            super(message);
        }
    }

    static final class Request {
        final String id;
        final String method;
        final String path;
        final int bodySize;

        Request(String id, String method, String path, int bodySize) {
            this.id = id;
            this.method = method;
            this.path = path;
            this.bodySize = bodySize;
        }
    }

    static final class Spec {
        String url;
        String caFile;
        int concurrency;
        double timeoutS;
        double gapS;
        final List<List<Request>> waves = new ArrayList<>();

        long timeoutMillis() {
            return Math.max(1L, Math.round(timeoutS * 1000.0));
        }
    }

    /** What became of one request; status and error may both be set (a body broke off). */
    static final class Outcome {
        Integer status;
        String error;
        long bytes;
        String protocol;
    }

    interface Caller {
        /** Do one request; must not throw (an error is an {@link Outcome} with error set). */
        Outcome call(Request request, byte[] body);
    }

    // ------------------------------------------------------------------ spec

    static Spec load(String path) throws BadSpec {
        String text;
        try {
            text = Files.readString(Path.of(path), StandardCharsets.UTF_8);
        } catch (Exception e) {
            throw new BadSpec("cannot read " + path + ": " + e);
        }
        Object root;
        try {
            root = MiniJson.parse(text);
        } catch (IllegalArgumentException e) {
            throw new BadSpec(path + " is not JSON: " + e.getMessage());
        }
        Map<?, ?> top = asObject(root, "the spec");
        Spec spec = new Spec();
        spec.url = string(top, "url", "the spec");
        if (!spec.url.startsWith("https://") || spec.url.endsWith("/")) {
            throw new BadSpec("url must be an https:// origin without a trailing slash, got "
                    + spec.url);
        }
        spec.caFile = string(top, "ca_file", "the spec");
        long concurrency = integer(top, "concurrency", "the spec");
        if (concurrency < 1 || concurrency > 10_000) {
            throw new BadSpec("concurrency must be from 1 to 10000, got " + concurrency);
        }
        spec.concurrency = (int) concurrency;
        spec.timeoutS = number(top, "timeout_s", "the spec");
        if (!(spec.timeoutS > 0)) {
            throw new BadSpec("timeout_s must be above 0");
        }
        spec.gapS = number(top, "gap_s", "the spec");
        if (!(spec.gapS >= 0)) {
            throw new BadSpec("gap_s must be at least 0");
        }
        Object waves = top.get("waves");
        if (!(waves instanceof List)) {
            throw new BadSpec("waves must be a list of lists of requests");
        }
        int w = 0;
        for (Object wave : (List<?>) waves) {
            if (!(wave instanceof List)) {
                throw new BadSpec("waves[" + w + "] must be a list of requests");
            }
            List<Request> requests = new ArrayList<>();
            int i = 0;
            for (Object item : (List<?>) wave) {
                String where = "waves[" + w + "][" + i + "]";
                Map<?, ?> r = asObject(item, where);
                String id = string(r, "id", where);
                String method = string(r, "method", where);
                String reqPath = string(r, "path", where);
                if (id.isEmpty() || method.isEmpty() || !reqPath.startsWith("/")) {
                    throw new BadSpec(where + ": id and method must be non-empty and path must "
                            + "start with /");
                }
                long size = integer(r, "body_size", where);
                if (size < 0 || size > Integer.MAX_VALUE - 8) {
                    throw new BadSpec(where + ": body_size out of range: " + size);
                }
                requests.add(new Request(id, method, reqPath, (int) size));
                i++;
            }
            spec.waves.add(requests);
            w++;
        }
        return spec;
    }

    private static Map<?, ?> asObject(Object value, String where) throws BadSpec {
        if (!(value instanceof Map)) {
            throw new BadSpec(where + " must be a JSON object");
        }
        return (Map<?, ?>) value;
    }

    private static String string(Map<?, ?> obj, String key, String where) throws BadSpec {
        Object v = obj.get(key);
        if (!(v instanceof String)) {
            throw new BadSpec(where + ": " + key + " must be a string");
        }
        return (String) v;
    }

    private static long integer(Map<?, ?> obj, String key, String where) throws BadSpec {
        Object v = obj.get(key);
        if (!(v instanceof Long)) {
            throw new BadSpec(where + ": " + key + " must be an integer");
        }
        return (Long) v;
    }

    private static double number(Map<?, ?> obj, String key, String where) throws BadSpec {
        Object v = obj.get(key);
        if (!(v instanceof Number)) {
            throw new BadSpec(where + ": " + key + " must be a number");
        }
        return ((Number) v).doubleValue();
    }

    // ------------------------------------------------------------------ TLS

    /** A trust manager that trusts exactly the CA certificates in the PEM file. */
    static X509TrustManager trustOnly(String caFile) throws BadSpec {
        try (InputStream in = new FileInputStream(caFile)) {
            Collection<? extends Certificate> certs =
                    CertificateFactory.getInstance("X.509").generateCertificates(in);
            if (certs.isEmpty()) {
                throw new BadSpec("ca_file " + caFile + " holds no certificate");
            }
            KeyStore store = KeyStore.getInstance(KeyStore.getDefaultType());
            store.load(null, null);
            int n = 0;
            for (Certificate cert : certs) {
                store.setCertificateEntry("ca" + n++, cert);
            }
            TrustManagerFactory factory =
                    TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
            factory.init(store);
            for (TrustManager tm : factory.getTrustManagers()) {
                if (tm instanceof X509TrustManager) {
                    return (X509TrustManager) tm;
                }
            }
            throw new BadSpec("no X509TrustManager for " + caFile);
        } catch (BadSpec e) {
            throw e;
        } catch (Exception e) {
            throw new BadSpec("cannot load ca_file " + caFile + ": " + e);
        }
    }

    static SSLContext sslContext(X509TrustManager trust) throws BadSpec {
        try {
            SSLContext ctx = SSLContext.getInstance("TLS");
            ctx.init(null, new TrustManager[] {trust}, null);
            return ctx;
        } catch (Exception e) {
            throw new BadSpec("cannot build an SSLContext: " + e);
        }
    }

    // ------------------------------------------------------------------ output

    private static final PrintStream OUT =
            new PrintStream(new FileOutputStream(FileDescriptor.out), false, StandardCharsets.UTF_8);

    static double now() {
        Instant t = Instant.now();
        return t.getEpochSecond() + t.getNano() / 1e9;
    }

    private static synchronized void line(String json) {
        OUT.print(json);
        OUT.print('\n');
        OUT.flush();
        if (OUT.checkError()) {
            System.err.println("driver: cannot write to stdout");
            Runtime.getRuntime().halt(1);
        }
    }

    private static String nullable(String s) {
        return s == null ? "null" : MiniJson.quote(s);
    }

    static void record(String id, Outcome o, double start, double end) {
        line("{\"id\":" + MiniJson.quote(id)
                + ",\"status\":" + (o.status == null ? "null" : o.status.toString())
                + ",\"error\":" + nullable(o.error)
                + ",\"start\":" + String.format(Locale.ROOT, "%.6f", start)
                + ",\"end\":" + String.format(Locale.ROOT, "%.6f", end)
                + ",\"bytes\":" + o.bytes
                + ",\"protocol\":" + nullable(o.protocol) + "}");
    }

    // ------------------------------------------------------------------ waves

    private static final Map<Integer, byte[]> BODIES = new ConcurrentHashMap<>();

    private static byte[] body(int size) {
        return BODIES.computeIfAbsent(size, n -> {
            byte[] data = new byte[n];
            Arrays.fill(data, (byte) 'x');
            return data;
        });
    }

    /**
     * Run every wave through a fixed pool of {@code concurrency} threads (requests taken in
     * order), sleep {@code gap_s} between waves, print the done line and exit 0.
     */
    static void run(Spec spec, Caller caller, String client, String version) {
        ExecutorService pool = Executors.newFixedThreadPool(spec.concurrency, r -> {
            Thread t = new Thread(r, "bench-worker");
            t.setDaemon(true);
            return t;
        });
        for (int w = 0; w < spec.waves.size(); w++) {
            List<Future<?>> pending = new ArrayList<>();
            for (Request r : spec.waves.get(w)) {
                pending.add(pool.submit(() -> {
                    double start = now();
                    Outcome o;
                    try {
                        o = caller.call(r, r.bodySize > 0 ? body(r.bodySize) : null);
                    } catch (Throwable t) { // a line per request, whatever went wrong
                        o = new Outcome();
                        o.error = t.toString();
                    }
                    record(r.id, o, start, now());
                }));
            }
            for (Future<?> f : pending) {
                try {
                    f.get();
                } catch (Exception e) {
                    System.err.println("driver: a worker failed: " + e);
                }
            }
            if (w < spec.waves.size() - 1 && spec.gapS > 0) {
                try {
                    Thread.sleep(Math.round(spec.gapS * 1000.0));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        }
        line("{\"done\":true,\"client\":" + MiniJson.quote(client) + ",\"version\":"
                + MiniJson.quote(version) + "}");
        pool.shutdownNow();
        System.exit(0);
    }

    /** The driver's main: load the spec (exit 2 when it is bad), then {@link #run}. */
    interface Setup {
        Caller make(Spec spec) throws BadSpec;
    }

    static void main(String[] args, String client, String version, Setup setup) {
        if (args.length != 1) {
            System.err.println("usage: " + client + " SPEC.json");
            System.exit(2);
        }
        Caller caller;
        Spec spec;
        try {
            spec = load(args[0]);
            caller = setup.make(spec);
        } catch (BadSpec e) {
            System.err.println("bad spec: " + e.getMessage());
            System.exit(2);
            return;
        }
        run(spec, caller, client, version);
    }
}
