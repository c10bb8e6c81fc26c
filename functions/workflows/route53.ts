/** The application's endpoint as a Route 53 record: what FAILOVER_TEST and the failover switch, and switch back. */
import {
  ChangeResourceRecordSetsCommand,
  ListResourceRecordSetsCommand,
  type Route53Client,
  type ResourceRecordSet,
} from '@aws-sdk/client-route-53';

export interface EndpointRecord {
  readonly hostedZoneId: string;
  readonly recordName: string;
}

/** The record as it is now (the first record set of that name), if any. */
export async function currentRecord(
  route53: Route53Client,
  endpoint: EndpointRecord,
): Promise<ResourceRecordSet | undefined> {
  const name = fqdn(endpoint.recordName);
  const found = await route53.send(
    new ListResourceRecordSetsCommand({
      HostedZoneId: endpoint.hostedZoneId,
      StartRecordName: name,
      MaxItems: 1,
    }),
  );
  const record = found.ResourceRecordSets?.[0];
  return record?.Name === name ? record : undefined;
}

/** The record name with its final dot, as Route 53 answers it. */
export function fqdn(name: string): string {
  return name.endsWith('.') ? name : `${name}.`;
}

/**
 * Replaces the record `now` (the one there, if any) with `next` in one change: an UPSERT when both are of
 * one type, else a DELETE and a CREATE (a name holds one CNAME and nothing else).
 */
export async function replaceRecord(
  route53: Route53Client,
  hostedZoneId: string,
  now: ResourceRecordSet | undefined,
  next: ResourceRecordSet,
  comment: string,
): Promise<void> {
  await route53.send(
    new ChangeResourceRecordSetsCommand({
      HostedZoneId: hostedZoneId,
      ChangeBatch: {
        Comment: comment,
        Changes:
          now && now.Type !== next.Type
            ? [
                { Action: 'DELETE', ResourceRecordSet: now },
                { Action: 'CREATE', ResourceRecordSet: next },
              ]
            : [{ Action: 'UPSERT', ResourceRecordSet: next }],
      },
    }),
  );
}
