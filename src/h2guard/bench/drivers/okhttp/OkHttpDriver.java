import java.io.InputStream;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.SSLContext;
import javax.net.ssl.X509TrustManager;
import okhttp3.MediaType;
import okhttp3.OkHttpClient;
import okhttp3.Protocol;
import okhttp3.Request;
import okhttp3.RequestBody;
import okhttp3.Response;
import okhttp3.ResponseBody;
import okhttp3.internal.http.HttpMethod;

/**
 * h2guard bench's OkHttp driver (OkHttp 3.13, Debian's libokhttp-java): one OkHttpClient with
 * its defaults (connection pool, retryOnConnectionFailure, 10 s connect/read/write timeouts),
 * trusting only the spec's CA, protocols HTTP_2 and HTTP_1_1, and a call timeout of the spec's
 * timeout_s covering the whole call, body included. Synchronous {@code execute()} calls from
 * the fixed pool of {@code concurrency} threads that {@link DriverCore} runs; no retries of our
 * own, so whatever OkHttp replays by itself is what bench measures.
 *
 * <p>Compiled together with ../java/MiniJson.java and ../java/DriverCore.java.
 */
public final class OkHttpDriver {
    private static final MediaType OCTETS = MediaType.get("application/octet-stream");

    private OkHttpDriver() {}

    static String version() {
        String agent = okhttp3.internal.Version.userAgent(); // "okhttp/3.13.1"
        int slash = agent.indexOf('/');
        return "okhttp " + (slash >= 0 ? agent.substring(slash + 1) : agent);
    }

    static String protocol(Protocol p) {
        return p.toString(); // "h2", "http/1.1"
    }

    static DriverCore.Caller caller(DriverCore.Spec spec) throws DriverCore.BadSpec {
        X509TrustManager trust = DriverCore.trustOnly(spec.caFile);
        SSLContext ctx = DriverCore.sslContext(trust);
        OkHttpClient client = new OkHttpClient.Builder()
                .sslSocketFactory(ctx.getSocketFactory(), trust)
                .protocols(Arrays.asList(Protocol.HTTP_2, Protocol.HTTP_1_1))
                .callTimeout(spec.timeoutMillis(), TimeUnit.MILLISECONDS)
                .build();
        client.dispatcher().setMaxRequests(spec.concurrency);
        client.dispatcher().setMaxRequestsPerHost(spec.concurrency);
        return (r, body) -> {
            DriverCore.Outcome o = new DriverCore.Outcome();
            Request.Builder b = new Request.Builder()
                    .url(spec.url + r.path)
                    .header("x-request-id", r.id);
            RequestBody payload = null;
            if (body != null) {
                payload = RequestBody.create(OCTETS, body); // sets the content-type too
            } else if (HttpMethod.requiresRequestBody(r.method)) {
                payload = RequestBody.create(null, new byte[0]); // OkHttp refuses a bodiless POST
            }
            b.method(r.method, payload);
            try (Response resp = client.newCall(b.build()).execute()) {
                o.status = resp.code();
                o.protocol = protocol(resp.protocol());
                ResponseBody rb = resp.body();
                if (rb != null) {
                    byte[] buf = new byte[65536];
                    try (InputStream in = rb.byteStream()) {
                        int n;
                        while ((n = in.read(buf)) != -1) {
                            o.bytes += n;
                        }
                    }
                }
            } catch (Exception e) {
                o.error = e.toString();
            }
            return o;
        };
    }

    public static void main(String[] args) {
        DriverCore.main(args, "okhttp", version(), OkHttpDriver::caller);
    }
}
