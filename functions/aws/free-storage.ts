import { CloudWatchClient, GetMetricStatisticsCommand } from '@aws-sdk/client-cloudwatch';
import { regionalClients } from './regional.ts';
import type { FreeStorage } from '../core/ports.ts';

/**
 * Free storage from the instance's CloudWatch metric `AWS/RDS FreeStorageSpace` (published every minute):
 * the lowest value of the newest 5-minute period within the last 15 minutes. SQL cannot tell a server's free
 * disk; RDS tells it here. Aurora grows its volume by itself and publishes no such figure.
 */
export function cloudWatchFreeStorage(
  clientFor: (region: string | undefined) => CloudWatchClient = regionalClients(
    (region) => new CloudWatchClient(region ? { region } : {}),
  ),
): FreeStorage {
  return async (instance, now) => {
    const answer = await clientFor(instance.region).send(
      new GetMetricStatisticsCommand({
        Namespace: 'AWS/RDS',
        MetricName: 'FreeStorageSpace',
        Dimensions: [{ Name: 'DBInstanceIdentifier', Value: instance.instanceIdentifier }],
        StartTime: new Date(now.getTime() - 15 * 60_000),
        EndTime: now,
        Period: 300,
        Statistics: ['Minimum'],
      }),
    );
    const newest = (answer.Datapoints ?? [])
      .filter((point) => point.Minimum !== undefined && point.Timestamp !== undefined)
      .sort((a, b) => b.Timestamp!.getTime() - a.Timestamp!.getTime())[0];
    return newest?.Minimum;
  };
}
