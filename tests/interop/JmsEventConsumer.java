import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collections;
import java.util.Enumeration;
import java.util.List;

import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.Message;
import javax.jms.MessageConsumer;
import javax.jms.Session;
import javax.jms.TextMessage;

import org.apache.activemq.ActiveMQConnectionFactory;

/**
 * A plain JMS 1.1 consumer of the workflow broker's events, as a Java client would write it.
 *
 * Usage: java JmsEventConsumer OPENWIRE_URL DESTINATION SELECTOR DEADLINE_SECONDS
 * (DESTINATION: a topic name, or queue://NAME for a queue; SELECTOR may be empty)
 *
 * Prints READY once subscribed, then one line per message, fields separated by tabs:
 *   MSG, the message class, JMSType, the delivery mode, the properties (name:JavaType:base64 value,
 *   sorted, separated by commas), the text body in base64 (or "-" when it is not a TextMessage, or
 *   "!" followed by the exception's class and message when getText() throws).
 * Stops at the first message whose eventType property is TEST_END (printing END), or at the deadline.
 */
public final class JmsEventConsumer {
    private static String b64(String text) {
        return Base64.getEncoder().encodeToString(text.getBytes(StandardCharsets.UTF_8));
    }

    public static void main(String[] args) throws Exception {
        String url = args[0], topic = args[1], selector = args[2];
        long deadline = System.currentTimeMillis() + Long.parseLong(args[3]) * 1000L;
        Connection connection = new ActiveMQConnectionFactory(url).createConnection();
        try {
            connection.start();
            Session session = connection.createSession(false, Session.AUTO_ACKNOWLEDGE);
            javax.jms.Destination destination = topic.startsWith("queue://")
                    ? session.createQueue(topic.substring("queue://".length())) : session.createTopic(topic);
            MessageConsumer consumer = session.createConsumer(destination, selector.isEmpty() ? null : selector);
            System.out.println("READY");
            System.out.flush();
            while (System.currentTimeMillis() < deadline) {
                Message message = consumer.receive(200);
                if (message == null) {
                    continue;
                }
                if ("TEST_END".equals(message.getStringProperty("eventType"))) {
                    System.out.println("END");
                    break;
                }
                List<String> names = new ArrayList<>();
                for (Enumeration<?> e = message.getPropertyNames(); e.hasMoreElements();) {
                    names.add((String) e.nextElement());
                }
                Collections.sort(names);
                StringBuilder props = new StringBuilder();
                for (String name : names) {
                    Object value = message.getObjectProperty(name);
                    if (props.length() > 0) {
                        props.append(',');
                    }
                    props.append(name).append(':').append(value.getClass().getSimpleName()).append(':')
                         .append(b64(String.valueOf(value)));
                }
                String body = "-";
                if (message instanceof TextMessage) {
                    try {
                        body = b64(((TextMessage) message).getText());
                    } catch (Exception e) {  // what a consumer sees of a body it cannot decode
                        body = "!" + e.getClass().getName() + ": " + e.getMessage();
                    }
                }
                String mode = message.getJMSDeliveryMode() == DeliveryMode.PERSISTENT ? "PERSISTENT" : "NON_PERSISTENT";
                System.out.println(String.join("\t", "MSG", message.getClass().getSimpleName(),
                        String.valueOf(message.getJMSType()), mode, props.toString(), body));
                System.out.flush();
            }
        } finally {
            connection.close();
        }
    }
}
