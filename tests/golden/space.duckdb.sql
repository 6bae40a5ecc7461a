WITH "scan_identifies" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id",
    ARG_MAX(
      "e"."plan",
      CASE
        WHEN NOT "e"."plan" IS NULL
        THEN ("e"."__ts", "e"."__received_at", "e"."__id")
      END
    ) AS "a6"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."plan" AS "plan"
    FROM "website"."identifies" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."plan" AS "plan"
    FROM "ios"."identifies" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "scan_order_completed" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id",
    COUNT_IF(TRUE) AS "a2",
    ARG_MAX(
      "e"."currency",
      CASE
        WHEN NOT "e"."currency" IS NULL
        THEN ("e"."__ts", "e"."__received_at", "e"."__id")
      END
    ) AS "a3",
    SUM(CASE WHEN TRUE THEN CAST("e"."revenue" AS DOUBLE) END) AS "a4",
    COUNT_IF(
      "e"."__ts" > CAST('2024-01-31 12:00:00' AS TIMESTAMP)
      AND "e"."revenue" > 50
      AND LEFT("e"."product_sku", 4) = 'sku-'
    ) AS "a5"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."currency" AS "currency",
      "t"."product_sku" AS "product_sku",
      "t"."revenue" AS "revenue"
    FROM "website"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."received_at" AS "__received_at",
      "t"."id" AS "__id",
      "t"."currency" AS "currency",
      "t"."product_sku" AS "product_sku",
      "t"."revenue" AS "revenue"
    FROM "ios"."order_completed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "scan_pages" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id",
    COUNT_IF("e"."name" IN ('Pricing', 'Home')) AS "a8"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."name" AS "name"
    FROM "website"."pages" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."name" AS "name"
    FROM "ios"."pages" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "scan_product_viewed" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id",
    COUNT_IF(TRUE) AS "a0",
    COALESCE(
      CAST(TO_JSON(
        LIST_SORT(
          ARRAY_AGG(DISTINCT CAST("e"."category" AS TEXT)) FILTER(WHERE
            NOT "e"."category" IS NULL)
        )
      ) AS TEXT),
      '[]'
    ) AS "a1",
    COUNT_IF("e"."__ts" > CAST('2024-02-23 12:00:00' AS TIMESTAMP)) AS "a7"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."category" AS "category"
    FROM "website"."product_viewed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts",
      "t"."category" AS "category"
    FROM "ios"."product_viewed" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "scan_tracks" AS (
  SELECT
    "e"."__profile",
    MAX("e"."user_id") AS "__user_id"
  FROM (
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts"
    FROM "website"."tracks" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
    UNION ALL
    SELECT
      COALESCE("t"."user_id", "t"."anonymous_id") AS "__profile",
      "t"."user_id" AS "user_id",
      "t"."timestamp" AS "__ts"
    FROM "ios"."tracks" AS "t"
    WHERE
      "t"."timestamp" <= CAST('2024-03-01 12:00:00' AS TIMESTAMP)
      AND NOT COALESCE("t"."user_id", "t"."anonymous_id") IS NULL
  ) AS "e"
  GROUP BY
    "e"."__profile"
), "profiles" AS (
  SELECT
    "__profile",
    MAX("__user_id") AS "__user_id",
    CASE WHEN MAX("__user_id") IS NULL THEN "__profile" END AS "__anonymous_id"
  FROM (
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_identifies"
    UNION ALL
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_order_completed"
    UNION ALL
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_pages"
    UNION ALL
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_product_viewed"
    UNION ALL
    SELECT
      "__profile",
      "__user_id"
    FROM "scan_tracks"
  ) AS "seen"
  GROUP BY
    "__profile"
), "profile_aggregates" AS (
  SELECT
    "p"."__profile",
    "p"."__user_id",
    "p"."__anonymous_id",
    "scan_identifies"."a6",
    "scan_order_completed"."a2",
    "scan_order_completed"."a3",
    "scan_order_completed"."a4",
    "scan_order_completed"."a5",
    "scan_pages"."a8",
    "scan_product_viewed"."a0",
    "scan_product_viewed"."a1",
    "scan_product_viewed"."a7"
  FROM "profiles" AS "p"
  LEFT JOIN "scan_identifies"
    ON "scan_identifies"."__profile" = "p"."__profile"
  LEFT JOIN "scan_order_completed"
    ON "scan_order_completed"."__profile" = "p"."__profile"
  LEFT JOIN "scan_pages"
    ON "scan_pages"."__profile" = "p"."__profile"
  LEFT JOIN "scan_product_viewed"
    ON "scan_product_viewed"."__profile" = "p"."__profile"
)
SELECT
  "profile_aggregates"."__profile",
  "profile_aggregates"."__user_id",
  "profile_aggregates"."__anonymous_id",
  CASE WHEN "profile_aggregates"."a0" > 0 THEN "profile_aggregates"."a1" END AS "categories",
  "profile_aggregates"."a3" AS "last_currency",
  CASE
    WHEN "profile_aggregates"."a2" > 0
    THEN COALESCE("profile_aggregates"."a4", 0)
  END AS "lifetime_revenue",
  (
    NOT "profile_aggregates"."__user_id" IS NULL
    AND (
      COALESCE(
        (
          COALESCE("profile_aggregates"."a5", 0) >= 2
        )
        AND (
          NOT (
            COALESCE("profile_aggregates"."a6" = 'enterprise', FALSE)
          )
        ),
        FALSE
      )
    )
  ) AS "repeat_buyers",
  (
    COALESCE(
      (
        COALESCE("profile_aggregates"."a7", 0) >= 1
      )
      AND (
        COALESCE("profile_aggregates"."a2", 0) = 0
      )
      AND (
        COALESCE("profile_aggregates"."a8", 0) >= 1
      ),
      FALSE
    )
  ) AS "viewers_not_buyers"
FROM "profile_aggregates"
