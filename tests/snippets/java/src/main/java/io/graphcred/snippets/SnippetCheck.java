package io.graphcred.snippets;

import com.azure.core.credential.AccessToken;
import com.azure.core.credential.TokenCredential;
import com.azure.core.credential.TokenRequestContext;
import com.example.graph.MountedTokenCredential;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.HexFormat;

/**
 * Drives the Java snippet of docs/consuming-tokens.md for tests/e2e/test_snippets.py, which copies the snippet
 * into a copy of this project. One token request per line read from stdin (alternately getTokenSync and the
 * Mono of getToken, both paths the SDKs use); one line out: "token <sha256 of the token> <expiry, Unix seconds>"
 * or "error <message>". The token itself is never printed.
 */
public final class SnippetCheck {
    public static void main(String[] args) throws Exception {
        TokenCredential credential = new MountedTokenCredential(Path.of(args[0]), Duration.ofMinutes(5));
        TokenRequestContext request = new TokenRequestContext().addScopes("https://graph.microsoft.com/.default");
        BufferedReader lines = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        boolean sync = true;
        while (lines.readLine() != null) {
            try {
                AccessToken token = sync ? credential.getTokenSync(request) : credential.getToken(request).block();
                byte[] digest = MessageDigest.getInstance("SHA-256")
                    .digest(token.getToken().getBytes(StandardCharsets.UTF_8));
                System.out.println("token " + HexFormat.of().formatHex(digest) + " "
                    + token.getExpiresAt().toEpochSecond());
            } catch (RuntimeException e) {
                System.out.println("error " + String.valueOf(e.getMessage()).replace('\n', ' '));
            }
            System.out.flush();
            sync = !sync;
        }
    }
}
