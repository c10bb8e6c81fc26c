import { DescribeDBClustersCommand, DescribeDBInstancesCommand, RDSClient } from '@aws-sdk/client-rds';
import { regionalClients } from './regional.ts';
import type { DatabaseStatus } from '../core/ports.ts';

/**
 * The source's status as RDS reports it (DescribeDBInstances, or DescribeDBClusters for Aurora), for the
 * primary watch: a probe that fails while RDS says `rebooting` or `failing-over` reads differently from one
 * where it says `available`.
 */
export function rdsDatabaseStatus(
  clientFor: (region: string | undefined) => RDSClient = regionalClients(
    (region) => new RDSClient(region ? { region } : {}),
  ),
): DatabaseStatus {
  return async (source) => {
    const client = clientFor(source.region);
    try {
      if (source.clusterIdentifier)
        return (
          await client.send(new DescribeDBClustersCommand({ DBClusterIdentifier: source.clusterIdentifier }))
        ).DBClusters?.[0]?.Status;
      if (source.instanceIdentifier)
        return (
          await client.send(
            new DescribeDBInstancesCommand({ DBInstanceIdentifier: source.instanceIdentifier }),
          )
        ).DBInstances?.[0]?.DBInstanceStatus;
      return undefined;
    } catch (error) {
      if (/NotFound/.test((error as Error).name)) return 'not found';
      throw error;
    }
  };
}
