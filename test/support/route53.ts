import {
  ChangeResourceRecordSetsCommand,
  CreateHostedZoneCommand,
  type Route53Client,
} from '@aws-sdk/client-route-53';

/** A hosted zone (moto's Route 53 API) holding one CNAME record, as an application's database endpoint; its id. */
export async function zoneWithCname(
  route53: Route53Client,
  zoneName: string,
  record: { readonly name: string; readonly value: string; readonly ttl?: number },
): Promise<string> {
  const zone = await route53.send(
    new CreateHostedZoneCommand({ Name: zoneName, CallerReference: `${zoneName}-${Date.now()}` }),
  );
  const zoneId = zone.HostedZone!.Id!.replace('/hostedzone/', '');
  await route53.send(
    new ChangeResourceRecordSetsCommand({
      HostedZoneId: zoneId,
      ChangeBatch: {
        Changes: [
          {
            Action: 'CREATE',
            ResourceRecordSet: {
              Name: record.name,
              Type: 'CNAME',
              TTL: record.ttl ?? 300,
              ResourceRecords: [{ Value: record.value }],
            },
          },
        ],
      },
    }),
  );
  return zoneId;
}
