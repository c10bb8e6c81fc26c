import { SendEmailCommand, SESv2Client } from '@aws-sdk/client-sesv2';
import type { MailMessage } from '../core/mail.ts';

/**
 * Mail on AWS: Amazon SES (v2 SendEmail), from a verified identity (the stack's `mailFrom`), with a text part
 * and, when given, an HTML part. One message to all recipients.
 */
export function sesMailer(options: {
  from: string;
  client?: SESv2Client;
}): (message: MailMessage) => Promise<void> {
  const client = options.client ?? new SESv2Client({});
  return async (message) => {
    await client.send(
      new SendEmailCommand({
        FromEmailAddress: options.from,
        Destination: { ToAddresses: [...message.to] },
        Content: {
          Simple: {
            Subject: { Data: message.subject, Charset: 'UTF-8' },
            Body: {
              Text: { Data: message.text, Charset: 'UTF-8' },
              ...(message.html ? { Html: { Data: message.html, Charset: 'UTF-8' } } : {}),
            },
          },
        },
      }),
    );
  };
}
