// A Java program connecting through the auth proxy as any program would: the PostgreSQL
// JDBC driver with its defaults (sslmode=prefer: it asks for TLS, the proxy answers N and
// the session goes on in the clear) and no password. Prints one JSON line with what it read.
//
//     java -cp /usr/share/java/postgresql.jar Client.java HOST PORT USER DBNAME
//
// A single source file, run without javac (Java 11+). Run by tests/languages.rs; make
// proxy-clients installs a JRE and the driver (Debian: default-jre-headless,
// libpostgresql-jdbc-java).

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

public class Client {
    public static void main(String[] args) throws Exception {
        String host = args[0], port = args[1], user = args[2], dbname = args[3];
        // The point is that no password is needed: refuse to run with one at hand, so a
        // pass here cannot come from one.
        if (System.getenv("PGPASSWORD") != null) {
            throw new IllegalStateException("PGPASSWORD is set: this client must connect without a password");
        }
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("connectTimeout", "20");
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + dbname;
        try (Connection conn = DriverManager.getConnection(url, props)) {
            String currentUser;
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT current_user")) {
                rs.next();
                currentUser = rs.getString(1);
            }
            int plusOne;
            try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int + 1")) {
                ps.setInt(1, 41);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    plusOne = rs.getInt(1);
                }
            }
            List<String> rows = new ArrayList<>();
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.execute("CREATE TEMP TABLE proxy_client_rows (id int, name text)");
            }
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO proxy_client_rows VALUES (?, ?)")) {
                ps.setInt(1, 1);
                ps.setString(2, "alpha");
                ps.addBatch();
                ps.setInt(1, 2);
                ps.setString(2, "beta");
                ps.addBatch();
                ps.executeBatch();
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT id, name FROM proxy_client_rows ORDER BY id")) {
                while (rs.next()) {
                    rows.add("[" + rs.getInt(1) + "," + quote(rs.getString(2)) + "]");
                }
            }
            conn.commit();
            String driver = conn.getMetaData().getDriverName() + " " + conn.getMetaData().getDriverVersion();
            System.out.println("{\"client\":" + quote(driver + " (Java " + System.getProperty("java.version") + ")")
                    + ",\"current_user\":" + quote(currentUser)
                    + ",\"plus_one\":" + plusOne
                    + ",\"rows\":[" + String.join(",", rows) + "]"
                    + "}");
        }
    }

    /** A JSON string (the values here are plain ASCII names). */
    private static String quote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }
}
